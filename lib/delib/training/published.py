"""Stages 04-06: what a training stage published (served.json) and how to query it: the embedded server with the
adapter, or a merged folder behind `transformers serve`; a few held-out prompts asked of the served models.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from delib.generation.cot import parse_completion
from delib.models import ChatRequest, ModelClient
from delib.run import files, stages
from delib.run.config import ModelRole, RunParams
from delib.run.io import clip
from delib.run.paths import shown, stage_dir
from delib.training.export import ExportError, export_lora_gguf, export_model_gguf
from delib.training.weights import served_base_gguf

if TYPE_CHECKING:
    import pandas as pd


SERVED_FILE = files.SERVED["sft"].name  # what 04_sft and 05_rl write: how to query the model they trained


def section_of(stage: str) -> str:
    """The params section that trains a training stage: "sft" for "04_sft", "rl" for "05_rl"."""
    return next(which for which, s in stages.TRAINING.items() if s == stage)


def publish(params: RunParams, stage: str, checkpoint: Path, lora: bool, state_dict: Optional[dict] = None) -> dict:
    """Make a trained checkpoint queryable like any model and record how in `<stage>/served.json`.

    Weights trained from the embedded GGUF go back to the embedded server: a LoRA adapter as a GGUF adapter on the
    shipped model (`adapter.gguf`), a full fine-tune as a whole float32 GGUF (`model.gguf`). Other weights (a hub
    model) are served by `transformers serve` from the checkpoint (`TransformersServer`).
    """
    out = stage_dir(params, stage)
    base_gguf = served_base_gguf(params)
    policy = params.models.policy
    if base_gguf is not None and lora:
        gguf_path = export_lora_gguf(checkpoint, out / "adapter.gguf", base_gguf)
        role, route = policy.model_copy(update={"adapter": shown(gguf_path)}), "gguf_lora"
    elif base_gguf is not None:
        if state_dict is None:
            raise ExportError("a full fine-tune needs its state dict to be exported to GGUF")
        gguf_path = export_model_gguf(state_dict, out / "model.gguf", base_gguf)
        role, route = policy.model_copy(update={"model": shown(gguf_path), "adapter": None}), "gguf_model"
    else:
        role, route = None, "transformers_serve"
    record = {"stage": stage, "route": route, "checkpoint": shown(checkpoint), "lora": lora,
              "role": role.model_dump(mode="json") if role else None,
              "base_gguf": str(base_gguf) if base_gguf else None}
    files.write(params, files.SERVED[section_of(stage)], record)
    return record


def served_record(params: RunParams, which: str) -> dict:
    """What stage 04 ("sft") or 05 ("rl") recorded in served.json: route, checkpoint, role."""
    return files.read(params, files.SERVED[which])


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


def held_out_prompts(prompts: "pd.DataFrame", n: int = 2) -> "pd.DataFrame":
    """A few held-out prompts (split "dev", never "test") for a first look at a trained model: one per expected
    action, at most `n`."""
    return prompts[prompts["split"] == "dev"].groupby("expected_action").head(1).head(n)


def ask(params: RunParams, roles: dict[str, ModelRole], prompts, stage: str, spec_ids=()) -> "pd.DataFrame":
    """Each served model's reply to each prompt (no spec in the prompt), through ModelClient as any model is
    queried; one row per (model, prompt) with the reply split into CoT and answer. A role that is None (a model
    only stage 06 can serve) is skipped with a note. Replies are capped at `evaluate.max_tokens`, as stage 06
    asks (without `evaluate.prestart_think`, the same call there is then answered by the cache)."""
    import pandas as pd

    rows = []
    for name, role in roles.items():
        if role is None:  # trained but not servable in place (e.g. a hub model: stage 06 starts transformers serve)
            print(f"{name}: not served here; stage 06 evaluates it")
            continue
        requests = [ChatRequest(messages=[{"role": "user", "content": p.prompt}], max_tokens=params.evaluate.max_tokens,
                                meta={"prompt_id": p.id}) for p in prompts.itertuples()]
        with ModelClient.for_run(params, role, f"policy_{name}", stage,
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
