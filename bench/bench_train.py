"""Serving a trained adapter: the embedded llama.cpp server (shipped Q4_1 GGUF + the adapter exported to GGUF)
against `transformers serve` (the adapter merged into the dequantized weights), both queried through ModelClient.

Measures start-up time, decode speed (completion tokens per second of wall time, requests one at a time and
`--concurrency` at once) and how often the two give the PyTorch model's greedy text. Needs a trained adapter
(stage 04 of a run; default: outputs/default/04_sft/checkpoint).

    .venv/bin/python bench/bench_train.py [--run outputs/default] [--prompts 6] [--max-tokens 128]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from delib.models import ChatRequest, ModelClient, embedded_model_path, transformers_server  # noqa: E402
from delib.models.client import ModelClient as _Client  # noqa: E402
from delib.run.config import CacheParams, ModelRole, Sampling  # noqa: E402
from delib.training import export, published
from delib.training.weights import convert_gguf  # noqa: E402


def greedy_plan(self, req, _plan=_Client._plan):
    """Greedy as PyTorch means it: llama-cpp-python's server otherwise applies repeat_penalty 1.1, top_k 40."""
    plan = _plan(self, req)
    if self.role.backend == "embedded":
        plan.body.update({"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0})
    return plan


def timed(role: ModelRole, prompts: list[str], concurrency: int, tmp: Path) -> dict:
    role = role.model_copy(update={"max_concurrency": concurrency})
    requests = [ChatRequest(messages=[{"role": "user", "content": p}]) for p in prompts]
    with ModelClient(role, "bench", CacheParams(enabled=False), run_dir=tmp, stage="bench", progress=False) as c:
        t0 = time.perf_counter()
        c.chat_many(requests[:1])  # warm: starts the embedded server, loads the prompt path
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = c.chat_many(requests)
        wall = time.perf_counter() - t0
    tokens = sum(r.usage.get("completion_tokens", 0) for r in results)
    return {"first_call_s": round(start_s, 2), "wall_s": round(wall, 2), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "texts": [r.text for r in results],
            "errors": sum(not r.ok for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="outputs/default")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    import pandas as pd
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    _Client._plan = greedy_plan
    run = ROOT / args.run
    checkpoint = run / "04_sft" / "checkpoint"
    prompts = pd.read_json(run / "01_policy" / "prompts.jsonl", lines=True)
    prompts = list(prompts[prompts["split"] == "eval"]["prompt"].head(args.prompts))
    shipped = embedded_model_path()
    base = convert_gguf(shipped, ROOT / "outputs" / ".cache" / "base_models")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    adapter = export.export_lora_gguf(checkpoint, tmp / "adapter.gguf", shipped)
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens)

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), checkpoint).eval()
    reference = []
    t0 = time.perf_counter()
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False)
        reference.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    pytorch_s = time.perf_counter() - t0

    report = {"prompts": len(prompts), "max_tokens": args.max_tokens, "pytorch_in_process_s": round(pytorch_s, 2)}
    llama_role = ModelRole(adapter=str(adapter), sampling=sampling)
    for conc in (1, args.concurrency):
        report[f"llama_cpp_c{conc}"] = timed(llama_role, prompts, conc, tmp)
    merged = published.merged_folder(checkpoint, str(base), tmp / "merged")
    t0 = time.perf_counter()
    with transformers_server.TransformersServer(merged, log_dir=tmp) as server:
        report["transformers_serve_start_s"] = round(time.perf_counter() - t0, 2)
        role = server.role(ModelRole(sampling=sampling))
        for conc in (1, args.concurrency):
            report[f"transformers_serve_c{conc}"] = timed(role, prompts, conc, tmp)
    for key, value in report.items():
        if isinstance(value, dict):
            value["same_greedy_as_pytorch"] = sum(t.strip() == r for t, r in zip(value.pop("texts"), reference))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
