"""`delib serve RUN VARIANT`: one variant of a run (base, spec_prompt, sft, sft_rl, an extra model) on an
OpenAI-compatible port of 127.0.0.1, the very model stage 06 evaluated, for other tools to query.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from delib.evaluation.lineup import STAGE, Variant, resolve_variants
from delib.models.servers import EmbeddedServer, LocalServer, TransformersServer, embedded_model_path, \
    llama_server_binary
from delib.spec.document import load_spec
from delib.run.config import RunParams, load_params, validate_params
from delib.run.paths import resolve, stage_dir
from delib.run.providers import provider_for
from delib.training.published import merged_folder
from delib.training.weights import base_model


class ServeError(ValueError):
    """What to serve cannot be found or served here; the message says why."""


def run_params(run: str) -> RunParams:
    """The params of a run: a params YAML file, a run folder (its manifest), or a run name under outputs/."""
    path = Path(run)
    if path.is_file():
        return load_params(path)
    folder = path if path.is_dir() else resolve("outputs") / run
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ServeError(f"{run}: neither a params file nor a run folder with a manifest.json "
                         f"(looked for {manifest})")
    return validate_params(recorded(json.loads(manifest.read_text(encoding="utf-8")).get("params")), str(manifest))


def recorded(params: dict) -> dict:
    """A manifest's params as the schema reads them now: a run recorded before the held-out split was called dev
    (prompts.eval_share, a set's split "eval") still opens."""
    if not isinstance(params, dict) or not isinstance(params.get("prompts"), dict):
        return params
    prompts = dict(params["prompts"])
    if "eval_share" in prompts:
        prompts["dev_share"] = prompts.pop("eval_share")
    if prompts.get("sets"):
        prompts["sets"] = [{**s, "split": "dev"} if isinstance(s, dict) and s.get("split") == "eval" else s
                           for s in prompts["sets"]]
    return {**params, "prompts": prompts}


def find_variant(params: RunParams, name: str) -> Variant:
    """The variant `name` of the run, as stage 06 resolves it; an error with the reason when it has no model."""
    spec = load_spec(resolve(params.spec.path), resolve(params.spec.mapping) if params.spec.mapping else None)
    variants = {v.name: v for v in resolve_variants(params, spec) if not v.skeleton}  # a grammar per request: no chat
    if name not in variants:
        raise ServeError(f"run {params.run_name!r} has no variant {name!r}; it has {', '.join(variants)}")
    variant = variants[name]
    if not variant.available:
        raise ServeError(f"variant {name!r} of run {params.run_name!r}: {variant.reason}")
    return variant


def server_for(variant: Variant, params: RunParams, log_dir: Optional[Path] = None) -> LocalServer:
    """A server (not started) of the variant's weights: llama.cpp for the embedded model and its adapters,
    `transformers serve` for a checkpoint llama.cpp cannot take."""
    role = variant.role
    if role is None:  # merged (again) into the folder stage 06 merges it into
        folder = merged_folder(resolve(variant.checkpoint), base_model(params),
                               stage_dir(params, STAGE) / f"merged_{variant.name}")
        return TransformersServer(folder, log_dir=log_dir)
    weights = provider_for(role).model_file()
    if weights is not None and weights.is_dir():  # a Hugging Face folder (the transformers backend)
        return TransformersServer(weights, log_dir=log_dir)
    if not provider_for(role).local_server:
        raise ServeError(f"variant {variant.name!r} is already served: {role.backend} model {role.model!r}"
                         + (f" at {role.base_url}" if role.base_url else "") + "; query it there")
    return EmbeddedServer(embedded_model_path(role.model), variant.name,
                          adapter=resolve(role.adapter) if role.adapter else None, log_dir=log_dir,
                          parallel=role.max_concurrency, binary=llama_server_binary())


def write_system_prompts(variant: Variant, folder: Path) -> Path:
    """The system prompts stage 06 gave the variant, by category ("*": prompts without one), as JSON in `folder`."""
    prompts = {**(variant.category_prompts or {}), "*": variant.system_prompt}
    path = Path(folder) / f"{variant.name}_system_prompts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prompts, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
