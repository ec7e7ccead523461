"""Stages 04-05: the weights the policy is trained from.

By default the embedded model's GGUF (SmolLM2-135M-Instruct, Q4_1) is dequantized once into a Hugging Face folder,
cached beside the model-call cache (outside any run folder) and keyed on the GGUF's sha256; a user with a hub and a
GPU names any Hugging Face folder or id in `sft.base_model` instead.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from delib.run.io import sha256_file
from delib.run.paths import resolve
from delib.run.providers import provider_for
from delib.training.errors import ChatTemplateError, TrainingError
from delib.training.logs import quiet

if TYPE_CHECKING:
    from delib.run.config import RunParams

SOURCE_FILE = "delib_source.json"  # written last into a converted folder: its presence means the folder is complete


def cache_root(params: "RunParams") -> Path:
    """Where converted base weights live: `base_models/` beside the model-call cache (default outputs/.cache/)."""
    return resolve(params.cache.path).parent / "base_models"


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """A Hugging Face folder (fp32 safetensors, tokenizer, chat template) of a GGUF model, converted once.

    transformers dequantizes the GGUF on load (`gguf_file=`); the model then carries a GGUF quantizer that refuses
    to save, so it is detached first: the weights are plain fp32 tensors by then. The folder is named by the
    file's sha256, so a changed GGUF converts again; it is written to a temporary folder and renamed, and a lock
    file makes a second process that asks meanwhile wait for the first one's folder instead of converting again.
    """
    digest = sha256_file(gguf_path)
    folder = cache_dir / f"{gguf_path.stem}-{digest[:16]}"
    if (folder / SOURCE_FILE).is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if this process dies
        if (folder / SOURCE_FILE).is_file():  # converted by the process that held the lock
            return folder
        return _convert(gguf_path, folder, digest)


def _convert(gguf_path: Path, folder: Path, digest: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        model.hf_quantizer = None  # the weights are dequantized; only the marker stops save_pretrained
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest,
                                                   "dtype": "float32"}, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its folder
            if not (folder / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def base_model(params: "RunParams") -> str:
    """What stage 04 trains: `sft.base_model` (a local folder, made absolute, or a hub id), else the converted
    embedded GGUF."""
    name = params.sft.base_model
    if name:
        local = resolve(name)
        return str(local) if local.exists() else name
    weights = provider_for(params.models.policy).weights_to_train()
    if weights is None:
        raise TrainingError(f"models.policy uses the {params.models.policy.backend!r} backend: TRL needs weights; "
                            "set sft.base_model to a Hugging Face folder or id, or use sft.backend: openai")
    if weights.is_dir():  # a Hugging Face folder (the transformers provider): trained as it is
        return str(weights)
    with quiet():
        return str(convert_gguf(weights, cache_root(params)))


def served_base_gguf(params: "RunParams") -> Optional[Path]:
    """The GGUF a trained adapter is served on, when the weights trained came from it (else None)."""
    weights = None if params.sft.base_model else provider_for(params.models.policy).weights_to_train()
    return weights if weights is not None and weights.suffix == ".gguf" else None


def check_chat_template(tokenizer, model_name: str) -> None:
    """The SFT data and the served model both go through the chat template: refuse a model without one."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{model_name} has no chat template, so (prompt, CoT, answer) cannot be laid out as the model will see "
            "them when served. Use an instruction-tuned model, or give a Jinja template file in "
            "sft.trl_args.chat_template_path (e.g. ChatML) and serve the model with the same template.")
