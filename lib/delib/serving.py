"""Stages 04-06: serving what was trained through the same model client as every other model.

A LoRA adapter trained (PEFT) on the embedded model is exported to llama.cpp's GGUF LoRA format and loaded by the
embedded server on top of the shipped GGUF (`ModelRole.adapter`); a fully fine-tuned model is exported to a whole
GGUF file. `transformers serve` is kept as the other route (any Hugging Face model, a GPU), and measured against it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .config import ModelRole, RunParams
from .io import clip, write_json_atomic
from .models import server as embedded
from .paths import require

if TYPE_CHECKING:
    import pandas as pd

SERVED_FILE = "served.json"  # what 04_sft and 05_rl write: how to query the model they trained
# PEFT module name -> llama.cpp tensor name (llama architecture: SmolLM2, Llama, Mistral-like)
LLAMA_MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}


class ExportError(ValueError):
    """An adapter or checkpoint that the GGUF exporter cannot represent faithfully."""


# ------------------------------------------------------------------------------------------------ GGUF export

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
                          "with serving.TransformersServer instead")
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


# ------------------------------------------------------------------------------------------------ what a stage serves

def _relative(path: Path) -> str:
    """A path as params write it: relative to the project root when under it."""
    from .paths import project_root

    path = Path(path).resolve()
    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        return str(path)


def publish(params: RunParams, stage: str, checkpoint: Path, lora: bool, state_dict: Optional[dict] = None) -> dict:
    """Make a trained checkpoint queryable like any model and record how in `<stage>/served.json`.

    Weights trained from the embedded GGUF go back to the embedded server: a LoRA adapter as a GGUF adapter on the
    shipped model (`adapter.gguf`), a full fine-tune as a whole float32 GGUF (`model.gguf`). Other weights (a hub
    model) are served by `transformers serve` from the checkpoint (`TransformersServer`).
    """
    from .paths import stage_dir
    from .training.weights import served_base_gguf

    out = stage_dir(params, stage)
    base_gguf = served_base_gguf(params)
    policy = params.models.policy
    if base_gguf is not None and lora:
        gguf_path = export_lora_gguf(checkpoint, out / "adapter.gguf", base_gguf)
        role, route = policy.model_copy(update={"adapter": _relative(gguf_path)}), "gguf_lora"
    elif base_gguf is not None:
        if state_dict is None:
            raise ExportError("a full fine-tune needs its state dict to be exported to GGUF")
        gguf_path = export_model_gguf(state_dict, out / "model.gguf", base_gguf)
        role, route = policy.model_copy(update={"model": _relative(gguf_path), "adapter": None}), "gguf_model"
    else:
        role, route = None, "transformers_serve"
    record = {"stage": stage, "route": route, "checkpoint": _relative(checkpoint), "lora": lora,
              "role": role.model_dump(mode="json") if role else None,
              "base_gguf": str(base_gguf) if base_gguf else None}
    write_json_atomic(out / SERVED_FILE, record)
    return record


def served_record(params: RunParams, which: str) -> dict:
    """What stage 04 ("sft") or 05 ("rl") recorded in served.json: route, checkpoint, role."""
    stage = {"sft": "04_sft", "rl": "05_rl"}[which]
    return json.loads(require(params, stage, SERVED_FILE).read_text())


def served_role(params: RunParams, which: str) -> Optional[ModelRole]:
    """The model role that queries `which` ("base", "sft" or "rl") through ModelClient, as any model is queried;
    None when the stage trained nothing servable. A `transformers_serve` checkpoint needs `serve_checkpoint`."""
    if which == "base":
        return params.models.policy
    record = served_record(params, which)
    if record.get("role") is None:
        return None
    return ModelRole.model_validate(record["role"])


def served_roles(params: RunParams) -> dict[str, ModelRole]:
    """Every model the evaluation stage compares that is servable now: base, and sft / rl when trained."""
    roles = {"base": params.models.policy}
    for which in ("sft", "rl"):
        try:
            role = served_role(params, which)
        except FileNotFoundError:
            continue
        if role is not None:
            roles[which] = role
    return roles


# ------------------------------------------------------------------------------------------------ transformers serve

def merged_folder(checkpoint: Path, base_model: str, out: Path) -> Path:
    """A LoRA checkpoint merged into its base weights as a plain Hugging Face folder (what `transformers serve`
    loads); a full checkpoint is returned as it is."""
    if not (Path(checkpoint) / "adapter_config.json").is_file():
        return Path(checkpoint)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    return out


class TransformersServer:
    """`transformers serve` of one Hugging Face folder on a free loopback port: an OpenAI-compatible server for
    weights llama.cpp cannot take. `role()` gives the ModelRole that queries it."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32",
                 log_dir: Optional[Path] = None, start_timeout_s: float = 300.0):
        self.folder, self.device, self.dtype = str(folder), device, dtype
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "delib-servers"
        self.start_timeout_s = start_timeout_s
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        return [str(cli), "serve", self.folder, "--host", "127.0.0.1", "--port", str(port), "--device", self.device,
                "--dtype", self.dtype, "--log-level", "warning"]

    def start(self) -> "TransformersServer":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = embedded.free_port()
        self.log_path = self.log_dir / f"transformers_serve-{self.port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder: never reach for the hub
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.is_file() else ""
        self.stop()
        raise RuntimeError(f"transformers serve did not start (log {self.log_path}):\n{tail}")

    def role(self, template: ModelRole) -> ModelRole:
        """`template` (its sampling and limits) pointed at this server."""
        return template.model_copy(update={"backend": "openai_compatible", "base_url": self.base_url,
                                           "model": self.folder, "adapter": None, "api_key_env": None})

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        embedded.stop_process_group(proc)

    def __enter__(self) -> "TransformersServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ask(params: RunParams, roles: dict[str, ModelRole], prompts, stage: str, spec_ids=()) -> "pd.DataFrame":
    """Each served model's reply to each prompt (no spec in the prompt), through ModelClient as any model is
    queried; one row per (model, prompt) with the reply split into CoT and answer. A role that is None (a model
    only stage 06 can serve) is skipped with a note. Replies are capped at `evaluate.max_tokens`, as stage 06
    asks (without `evaluate.prestart_think`, the same call there is then answered by the cache)."""
    import pandas as pd

    from .generate import parse_completion
    from .models import ChatRequest, ModelClient
    from .paths import run_dir

    rows = []
    for name, role in roles.items():
        if role is None:  # trained but not servable in place (e.g. a hub model: stage 06 starts transformers serve)
            print(f"{name}: not served here; stage 06 evaluates it")
            continue
        requests = [ChatRequest(messages=[{"role": "user", "content": p.prompt}], max_tokens=params.evaluate.max_tokens,
                                meta={"prompt_id": p.id}) for p in prompts.itertuples()]
        with ModelClient(role, f"policy_{name}", params.cache, params.seed, run_dir(params), stage,
                         progress=False) as client:
            results = client.chat_many(requests)
        for p, res in zip(prompts.itertuples(), results):
            parsed = parse_completion(res.text, res.finish_reason, spec_ids)
            rows.append({"model": name, "prompt_id": p.id, "category": p.category,
                         "expected_action": p.expected_action, "cot": parsed.cot, "answer": parsed.answer,
                         "cited": parsed.cited, "action": parsed.action, "malformed": parsed.malformed,
                         "error": res.error})
    return pd.DataFrame(rows)


def show_answers(table: "pd.DataFrame", width: int = 240) -> str:
    """The replies of `ask` as text, model by model under each prompt."""
    if table.empty:
        return "(no model to show here: stage 06 evaluates the trained models)"
    blocks = []
    for pid, group in table.groupby("prompt_id", sort=False):
        first = group.iloc[0]
        lines = [f"[{pid}] {first.category}, expected {first.expected_action}"]
        for r in group.itertuples():
            lines.append(f"  {r.model:<5} cot   : {clip(r.cot, width) or '(none)'}")
            lines.append(f"  {'':<5} answer: {clip(r.answer, width) or '(none)'}"
                         + (f"   [{r.malformed}]" if r.malformed else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
