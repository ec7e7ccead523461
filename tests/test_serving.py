"""Serving what was trained: the GGUF LoRA export (names, alpha, the RoPE row permutation of Q and K), what it
refuses, and the served roles the evaluation stage reads. No model needed; the greedy-equivalence proof against the
real model is in test_serving_equivalence.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from delib.models import servers
from delib.run.config import validate_params
from delib.training import export, published

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

N_HEAD, N_HEAD_KV, HIDDEN, LAYERS = 4, 2, 16, 2
KV = HIDDEN // N_HEAD * N_HEAD_KV


def fake_base(path: Path) -> Path:
    """A llama-architecture GGUF with the metadata the exporter reads (and one tensor)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_tensor("token_embd.weight", np.zeros((8, HIDDEN), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def fake_adapter(folder: Path, r: int = 2, alpha: float = 4.0, modules=("q_proj", "k_proj", "v_proj"),
                 **config) -> tuple[Path, dict]:
    """A PEFT adapter folder as PEFT saves one."""
    rng = np.random.default_rng(0)
    out_dim = {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV}
    tensors = {}
    for layer in range(LAYERS):
        for m in modules:
            key = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((r, HIDDEN)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((out_dim[m], r)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA",
                                                            **config}))
    return folder, tensors


def reference_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out independently."""
    head_dim = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        rows = w[h * head_dim:(h + 1) * head_dim]
        half = head_dim // 2
        # interleave the two halves: row 2i is the first half's i-th row, row 2i+1 the second half's
        out[h * head_dim:(h + 1) * head_dim][0::2] = rows[:half]
        out[h * head_dim:(h + 1) * head_dim][1::2] = rows[half:]
    return out


def test_rope_permutation_matches_llama_cpp():
    w = np.arange(HIDDEN * 3, dtype=np.float32).reshape(HIDDEN, 3)
    assert np.array_equal(export.rope_permute(w, N_HEAD), reference_permute(w, N_HEAD))
    assert not np.array_equal(export.rope_permute(w, N_HEAD), w)


def test_lora_export_names_alpha_and_permutation(tmp_path):
    base = fake_base(tmp_path / "base.gguf")
    folder, tensors = fake_adapter(tmp_path / "adapter")
    out = export.export_lora_gguf(folder, tmp_path / "adapter.gguf", base)
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(4.0)
    got = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(got) == LAYERS * 3 * 2
    pre = "base_model.model.model.layers.1.self_attn"
    assert np.array_equal(got["blk.1.attn_q.weight.lora_a"], tensors[f"{pre}.q_proj.lora_A.weight"])  # A: as is
    assert np.array_equal(got["blk.1.attn_q.weight.lora_b"],
                          reference_permute(tensors[f"{pre}.q_proj.lora_B.weight"], N_HEAD))
    assert np.array_equal(got["blk.1.attn_k.weight.lora_b"],
                          reference_permute(tensors[f"{pre}.k_proj.lora_B.weight"], N_HEAD_KV))
    assert np.array_equal(got["blk.1.attn_v.weight.lora_b"], tensors[f"{pre}.v_proj.lora_B.weight"])  # no RoPE


def test_rslora_alpha_keeps_the_scale(tmp_path):
    base = fake_base(tmp_path / "base.gguf")
    folder, _ = fake_adapter(tmp_path / "adapter", r=4, alpha=8.0, use_rslora=True)
    reader = gguf.GGUFReader(str(export.export_lora_gguf(folder, tmp_path / "a.gguf", base)))
    # PEFT scales by alpha / sqrt(r) = 4; llama.cpp by alpha' / r: alpha' = 16
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)


@pytest.mark.parametrize("config, match", [({"use_dora": True}, "DoRA"),
                                           ({"rank_pattern": {"q_proj": 4}}, "rank_pattern")])
def test_export_refuses_what_llama_cpp_cannot_apply(tmp_path, config, match):
    base = fake_base(tmp_path / "base.gguf")
    folder, _ = fake_adapter(tmp_path / "adapter", **config)
    with pytest.raises(export.ExportError, match=match):
        export.export_lora_gguf(folder, tmp_path / "a.gguf", base)


def test_export_refuses_lora_outside_the_decoder_layers(tmp_path):
    base = fake_base(tmp_path / "base.gguf")
    folder, tensors = fake_adapter(tmp_path / "adapter")
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((2, HIDDEN), dtype=np.float32)
    safetensors_numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(export.ExportError, match="only the decoder layers"):
        export.export_lora_gguf(folder, tmp_path / "a.gguf", base)


def test_published_adapter_is_a_policy_role(tmp_path, monkeypatch):
    base = fake_base(tmp_path / "base.gguf")
    folder, _ = fake_adapter(tmp_path / "adapter")
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs")})
    monkeypatch.setattr("delib.training.published.served_base_gguf", lambda p: base)
    record = published.publish(params, "04_sft", folder, lora=True)
    assert record["route"] == "gguf_lora"
    role = published.served_role(params, "sft")
    assert role.backend == "embedded" and role.model == params.models.policy.model
    assert Path(role.adapter).name == "adapter.gguf" and Path(role.adapter).is_file()
    assert role.sampling == params.models.policy.sampling  # queried exactly like the base policy
    roles = published.served_roles(params)
    assert set(roles) == {"base", "sft"}  # rl has not run


def test_a_hub_model_is_served_by_transformers(tmp_path):
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs"),
                              "sft": {"base_model": "some-org/some-model"}})
    record = published.publish(params, "05_rl", tmp_path / "ckpt", lora=True)
    assert record["route"] == "transformers_serve" and record["role"] is None
    assert published.served_role(params, "rl") is None


def test_transformers_server_command_and_a_checkpoints_role(tmp_path):
    """A trained checkpoint llama.cpp cannot take is asked as a transformers role on its merged folder, with the
    policy's sampling (so it samples as the other variants do, `generation_config` and all)."""
    from delib.evaluation.answering import checkpoint_role
    from delib.run.providers import provider_for
    server = servers.TransformersServer(tmp_path / "merged", log_dir=tmp_path)
    cmd = server.command(1234)
    assert cmd[1:3] == ["serve", str(tmp_path / "merged")] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    params = validate_params({"run_name": "t", "models": {"policy": {"sampling": {"temperature": 0.7}}}})
    role = checkpoint_role(params.models.policy, tmp_path / "merged")
    assert role.backend == "transformers" and role.model == str(tmp_path / "merged") and role.adapter is None
    assert role.sampling == params.models.policy.sampling and provider_for(role).grammar_dialect() is None


def test_show_answers_with_nothing_served_here():
    """A model only stage 06 can serve (trained from a hub model) leaves the stage 04/05 preview empty."""
    import pandas as pd

    from delib.training import published

    assert "stage 06" in published.show_answers(pd.DataFrame([]))
