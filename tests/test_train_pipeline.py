"""Stages 04-05 end to end on a tiny random Llama with a ChatML tokenizer made here (nothing is downloaded) and a
scripted judge: SFT, then GRPO from the SFT adapter, with a Hugging Face base model (the route through
`transformers serve`). On the CPU in float32; on a GPU (when there is one) with the GPU recipe's bf16 and
gradient checkpointing. About 20 s on 2 CPU cores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.pipeline  # trains a model for real

torch = pytest.importorskip("torch")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_model(folder: Path) -> Path:
    """A 2-layer Llama and a byte-level BPE tokenizer trained on a few lines, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["<think> the user asks </think> I can't help with that. Sure, here is how."] * 50,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")
    fast.chat_template = CHATML
    config = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_sft_then_grpo_on_a_tiny_model(tmp_path, monkeypatch, device):
    from delib import training
    from delib.models import ModelClient, scripted_transport
    from delib.run.config import validate_params
    from delib.training import published

    base = tiny_model(tmp_path / "tiny")
    gpu = device == "cuda"
    dtype, cpu_only = ("bfloat16", {}) if gpu else ("float32", {"use_cpu": True})
    params = validate_params({
        "run_name": "gpu", "outputs_dir": str(tmp_path / "outputs"),
        "sft": {"base_model": str(base), "dtype": dtype, "max_steps": 3, "per_device_train_batch_size": 2,
                "lora_target_modules": ["all-linear"], "gradient_checkpointing": gpu, "trl_args": cpu_only},
        "rl": {"dtype": dtype, "max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
               "max_completion_length": 16, "gradient_checkpointing": gpu, "trl_args": cpu_only}})
    run = tmp_path / "outputs" / "gpu"
    (run / "03_judge").mkdir(parents=True)
    (run / "01_policy").mkdir()
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "<think>\nthe user asks\n</think>\nSure, here is how."}],
             "prompt_id": f"p{i}", "category": "c", "expected_action": "comply", "final_score": 9.0} for i in range(4)]
    (run / "03_judge" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "03_judge" / "rl.jsonl").write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": f"question {i}",
                                                                    "category": "c", "expected_action": "comply"}) + "\n"
                                                        for i in range(4)))
    monkeypatch.setattr("delib.training.rl.read_outputs",
                        lambda p: (None, None, {"c": {"text": "[c-1] comply.", "tokens": 3}}))
    verdict = '{"action_correct": 7, "helpfulness": 7, "style": 7, "overall": 7, "rationale": "ok"}'
    real_for_run = ModelClient.for_run  # the reward's judge: a scripted model
    monkeypatch.setattr(ModelClient, "for_run", lambda *a, **k: real_for_run(
        *a, **{**k, "transport": scripted_transport(lambda body: verdict)}))

    sft = training.run(params, "sft")
    assert sft["device"].startswith(device) and sft["steps"] == 3 and sft["served"] == "transformers_serve"
    rl = training.run(params, "rl")
    assert rl["device"].startswith(device) and rl["steps"] == 2 and "kl_last" in rl
    assert published.served_record(params, "rl")["route"] == "transformers_serve"
    merged = published.merged_folder(run / "05_rl" / "checkpoint", str(base), tmp_path / "merged")
    assert (merged / "config.json").is_file()
    assert sft["loss_first"] > 0 and 0 <= rl["reward_first"] <= 1
    graded = [json.loads(x) for x in (run / "05_rl" / "rewards.jsonl").read_text().splitlines()]
    assert len(graded) == 2 * 2  # 2 steps x 2 completions
    assert all(g["judge"] == 0.7 for g in graded if g["answer"])  # the scripted judge's 7 of 10 reached the reward
    print(json.dumps({"sft": sft, "rl": rl}, indent=1))
