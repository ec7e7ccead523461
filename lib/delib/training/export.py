"""Stages 04-05: trained weights exported for llama.cpp: a LoRA adapter as a GGUF LoRA file, a full fine-tune as a
whole GGUF model (llama architecture).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    pass


# PEFT module name -> llama.cpp tensor name (llama architecture: SmolLM2, Llama, Mistral-like)
LLAMA_MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}


class ExportError(ValueError):
    """An adapter or checkpoint that the GGUF exporter cannot represent faithfully."""


def _gguf_meta(base_gguf: Path) -> dict:
    """Architecture and head counts of a GGUF model (what the RoPE permutation needs)."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = reader.fields["general.architecture"].contents()
    get = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    return {"arch": arch, "n_head": get(f"{arch}.attention.head_count"),
            "n_head_kv": get(f"{arch}.attention.head_count_kv") or get(f"{arch}.attention.head_count"),
            "n_layer": get(f"{arch}.block_count"), "reader": reader}


def rope_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter reorders the rows of the Q and K projections for its RoPE layout (pairs interleaved
    instead of halves); a matrix added to those rows (the LoRA B, a fine-tuned weight) needs the same order."""
    return (rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def _tensor_name(module: str, arch_n_layer: int) -> tuple[str, Optional[str]]:
    """('blk.{i}.attn_q', 'q' | 'k' | None) for a PEFT module path like 'model.layers.3.self_attn.q_proj'."""
    parts = module.split(".")
    try:
        i = parts.index("layers")
        layer = int(parts[i + 1])
        suffix = ".".join(parts[i + 2:])
    except (ValueError, IndexError):
        raise ExportError(f"LoRA on {module!r}: only the decoder layers' linear modules can be exported "
                          f"({', '.join(LLAMA_MODULES)})") from None
    if suffix not in LLAMA_MODULES or not 0 <= layer < arch_n_layer:
        raise ExportError(f"LoRA on {module!r}: not one of {', '.join(LLAMA_MODULES)} of layers 0-{arch_n_layer - 1}")
    name = LLAMA_MODULES[suffix]
    return f"blk.{layer}.{name}", {"attn_q": "q", "attn_k": "k"}.get(name)


def export_lora_gguf(adapter_dir: str | Path, out_path: str | Path, base_gguf: str | Path) -> Path:
    """A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) as a llama.cpp GGUF adapter
    for `base_gguf`, in float32. Refuses what llama.cpp cannot apply as trained (DoRA, per-module ranks, LoRA on
    embeddings)."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise ExportError("DoRA adapters cannot be served by llama.cpp: train with use_dora false")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ExportError("per-module ranks or alphas (rank_pattern/alpha_pattern) cannot be exported: llama.cpp "
                          "takes one alpha per adapter")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    # llama.cpp scales by alpha / r; rsLoRA scales by alpha / sqrt(r): the same product with alpha * sqrt(r)
    gguf_alpha = alpha * r ** 0.5 if config.get("use_rslora") else alpha
    meta = _gguf_meta(Path(base_gguf))
    if meta["arch"] != "llama":
        raise ExportError(f"GGUF LoRA export knows the llama architecture, not {meta['arch']!r}: serve this model "
                          "with delib.models.servers.TransformersServer instead")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out_path), meta["arch"])
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
    written = 0
    for key in sorted(tensors):
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ExportError(f"adapter tensor {key!r} is not a LoRA A/B matrix (modules_to_save cannot be "
                              "exported: leave them out of the LoRA config)")
        module, ab = key.split(".lora_")
        module = module.removeprefix("base_model.model.")
        name, qk = _tensor_name(module, meta["n_layer"])
        data = tensors[key].astype(np.float32)
        if ab.startswith("B") and qk:
            data = rope_permute(data, meta["n_head"] if qk == "q" else meta["n_head_kv"])
        writer.add_tensor(f"{name}.weight.lora_{ab[0].lower()}", np.ascontiguousarray(data))
        written += 1
    if not written:
        raise ExportError(f"{adapter_dir}: no LoRA tensors in the adapter")
    return _write_gguf(writer, out_path)


def export_model_gguf(state_dict: dict, out_path: str | Path, base_gguf: str | Path) -> Path:
    """A fine-tuned llama-architecture model (its Hugging Face state dict) as a whole float32 GGUF file, with the
    base GGUF's metadata and tokenizer: for full fine-tuning, and as a float reference for the exporter's tests."""
    import gguf

    meta = _gguf_meta(Path(base_gguf))
    reader = meta["reader"]
    if meta["arch"] != "llama":
        raise ExportError(f"GGUF export knows the llama architecture, not {meta['arch']!r}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, meta["n_layer"])
    wanted = {t.name for t in reader.tensors}
    writer = gguf.GGUFWriter(str(out_path), meta["arch"])
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for key, tensor in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        stem = key.removesuffix(".weight")
        name = names.get_name(stem)
        if name is None:
            raise ExportError(f"no GGUF name for {key!r}")
        name += ".weight"
        if name not in wanted:
            continue  # e.g. lm_head when the embeddings are tied
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            data = rope_permute(data, meta["n_head"])
        elif name.endswith("attn_k.weight"):
            data = rope_permute(data, meta["n_head_kv"])
        writer.add_tensor(name, np.ascontiguousarray(data))
        wanted.discard(name)
    if wanted:
        raise ExportError(f"the state dict lacks {len(wanted)} tensors of the base GGUF, e.g. {sorted(wanted)[:3]}")
    return _write_gguf(writer, Path(out_path))


def _write_gguf(writer, out_path: Path) -> Path:
    """Write a filled GGUFWriter's header, metadata and tensors to `out_path` (its folder made if missing)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
