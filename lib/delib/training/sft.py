"""Stage 04 (SFT): fine-tune the policy on (prompt, CoT, answer) with the spec removed from the prompt, so that the
model must recall the spec itself. TRL's SFTTrainer, LoRA by default, loss on the assistant turn only.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from delib.run import files, stages
from delib.run.paths import stage_dir
from delib.training import logs, loop, recipe, weights
from delib.training.errors import EmptyDatasetError, TrainingError

if TYPE_CHECKING:
    from datasets import Dataset

    from delib.run.config import RunParams

STAGE = stages.SFT


def funnel_text(params: "RunParams") -> str:
    """Stage 03's funnel as a few lines of text (for the empty-dataset error)."""
    funnel = files.read(params, files.FUNNEL, missing_ok=True)
    if funnel.empty:
        return f"  (no {files.FUNNEL.name} in {files.FUNNEL.stage})"
    return "\n".join(f"  {r.step:<28} {r.samples:>5} samples  {r.prompts:>4} prompts" for r in funnel.itertuples())


def read_sft_set(params: "RunParams") -> list[dict]:
    """Stage 03's SFT set (prompt without the spec, assistant turn with <think> CoT and answer), capped at
    `sft.max_prompts`; an empty set stops here with the funnel that emptied it."""
    path = files.SFT_SET.path(params)
    rows = files.read(params, files.SFT_SET)
    if params.sft.max_prompts:
        rows = rows[: params.sft.max_prompts]
    if not rows:
        raise EmptyDatasetError(
            f"{path} has no samples: nothing survived filtering, so there is nothing to fine-tune on.\n"
            f"Stage 03's funnel:\n{funnel_text(params)}\n"
            "Lower judge.threshold, raise generate.samples_per_prompt or generate.max_prompts, or use a stronger "
            "generator (models.generator), then re-run stages 02-03.")
    for i, row in enumerate(rows):
        roles = [m.get("role") for m in row.get("messages", [])]
        if roles[-1:] != ["assistant"] or "user" not in roles:
            raise TrainingError(f"{path}: row {i + 1} is not a user turn followed by an assistant turn: {roles}")
    return rows


def sft_dataset(rows: list[dict]) -> "Dataset":
    """TRL's conversational prompt-completion form: the loss falls on the completion (CoT and answer) only."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])


def train(params: "RunParams") -> dict:
    """Fine-tune in this process and write the checkpoint, log.jsonl, training.json and what serving needs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    t0 = time.perf_counter()
    s = params.sft
    out = stage_dir(params, STAGE)
    n_threads = recipe.threads(s)
    rows = read_sft_set(params)
    base = weights.base_model(params)
    with logs.quiet():
        tokenizer = AutoTokenizer.from_pretrained(base)
        if not s.trl_args.get("chat_template_path"):
            weights.check_chat_template(tokenizer, base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=recipe.torch_dtype(s))
        clock = logs.step_clock(files.TRAINING_PROGRESS["sft"].path(params))
        trainer = SFTTrainer(model=model, args=recipe.sft_config(params, out / "trainer"),
                             train_dataset=sft_dataset(rows), processing_class=tokenizer,
                             peft_config=recipe.lora_config(s) if s.lora else None, callbacks=[clock])
    device = loop.fit(trainer, "sft", s, s.lora)
    if not recipe.is_main_process():
        return {}
    return loop.save(params, "sft", trainer, tokenizer, s.lora, clock, t0, {
        "examples": len(rows), "base_model": base, "device": device, "threads": n_threads,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)})
