"""Check that the training stages run on a GPU: SFT (LoRA, bfloat16) then GRPO from the SFT adapter, through the
real entry point of each stage (`python -m delib.training sft|rl PARAMS`), on a machine with CUDA.

    python scripts/gpu_training_check.py --run RUN_FOLDER --tokenizer HF_FOLDER --out DIR

RUN_FOLDER: a finished run's folder (its 01_policy and 03_judge are copied: the spec, the SFT and RL sets).
HF_FOLDER: a Hugging Face folder with the policy's tokenizer and chat template (e.g. the converted embedded model,
outputs/.cache/base_models/SmolLM2-135M-Instruct...). The policy trained is a small model with random weights of
that tokenizer's vocabulary (a machine without the hub or the real weights can run the check), and the RL reward's
judge is a stub HTTP server on 127.0.0.1 whose scores come from a hash of the request: this checks that the training
code runs on the GPU with LoRA in the precision asked for (the device each stage trained on is read back), not what
training learns. Prints each stage's device, steps, seconds and losses or rewards, and exits 1 when a stage did not
train on CUDA.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


class StubJudge(BaseHTTPRequestHandler):
    """An OpenAI-style chat endpoint answering every judge request with a JSON verdict whose scores come from a hash
    of the request (the same request, the same score), so that GRPO's groups get different rewards."""

    def do_GET(self):  # GET /v1/models
        self._send({"object": "list", "data": [{"id": "stub-judge", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        graded = body["messages"][-1]["content"]
        score = zlib.crc32(graded.encode()) % 11
        verdict = {"action_correct": score, "helpfulness": score, "style": score, "overall": score,
                   "rationale": "stub judge: a score from a hash"}
        self._send({"id": "stub", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": json.dumps(verdict)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def tiny_model(tokenizer_dir: Path, out: Path) -> Path:
    """A 2-layer Llama with random weights and the given tokenizer, saved as a Hugging Face folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run's folder (01_policy, 03_judge)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a Hugging Face folder with the tokenizer")
    ap.add_argument("--out", type=Path, required=True, help="an empty folder for the check's run")
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16", help="training precision (float32 to try the script on a CPU)")
    args = ap.parse_args(argv)

    import torch
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    run = args.out / "outputs" / "gpucheck"
    for stage in ("01_policy", "03_judge"):
        shutil.copytree(args.run / stage, run / stage, dirs_exist_ok=True)
    base = tiny_model(args.tokenizer, args.out / "tiny_base")

    server = ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    params = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    params.update({"run_name": "gpucheck", "outputs_dir": str(args.out / "outputs")})
    params["spec"]["path"] = str(ROOT / params["spec"]["path"])
    params["prompts"]["sets"] = [{**s, "path": str(ROOT / s["path"])} for s in params["prompts"]["sets"]]
    params["cache"] = {"enabled": False, "path": str(args.out / "cache.sqlite")}
    params["models"]["judge"] = {"backend": "openai_compatible", "model": "stub-judge",
                                 "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                 "sampling": {"temperature": 0.0, "max_tokens": 128}}
    params["sft"].update({"base_model": str(base), "dtype": args.dtype, "lora": True, "max_steps": args.sft_steps,
                          "per_device_train_batch_size": 4, "num_processes": 1})
    params["rl"].update({"dtype": args.dtype, "from_sft": True, "max_steps": args.rl_steps, "num_generations": 4,
                         "max_completion_length": 64, "num_processes": 1})
    path = args.out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))

    ok = True
    for stage, folder in (("sft", "04_sft"), ("rl", "05_rl")):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "delib.training", stage, str(path)], cwd=ROOT)
        seconds = time.perf_counter() - t0
        summary_path = run / folder / "training.json"
        if proc.returncode or not summary_path.is_file():
            print(f"{stage}: FAILED (exit {proc.returncode}) after {seconds:.1f} s")
            ok = False
            continue
        s = json.loads(summary_path.read_text())
        log = [json.loads(line) for line in (run / folder / "log.jsonl").read_text().splitlines() if line.strip()]
        key = "loss" if stage == "sft" else "reward"
        curve = [round(r[key], 4) for r in log if isinstance(r.get(key), (int, float))]
        on_gpu = str(s.get("device", "")).startswith("cuda")
        ok &= on_gpu
        print(f"{stage}: device {s.get('device')}, {len(curve)} steps logged, process {seconds:.1f} s, "
              f"{key} by step {curve if len(curve) <= 6 else curve[:3] + ['...'] + curve[-3:]}, "
              f"trainable parameters {s.get('trainable_parameters')}, "
              f"served route {s.get('served')}" + ("" if on_gpu else "  <- not on CUDA"))
    server.shutdown()
    print("GPU training check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
