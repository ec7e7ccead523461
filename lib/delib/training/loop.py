"""What the SFT and RL stages do alike around their TRL trainer: train under the out-of-memory advice, then write
the checkpoint, the step log, the summary and what serving needs."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from delib.run import stages
from delib.run.paths import stage_dir
from delib.training import logs, published, recipe
from delib.training.errors import oom_guard

if TYPE_CHECKING:
    from delib.run.config import RunParams

CHECKPOINT = "checkpoint"  # the LoRA adapter (PEFT folder) or the full model, with its tokenizer


def fit(trainer, section: Literal["sft", "rl"], settings, lora: bool) -> str:
    """`trainer.train()` without TRL's console printer (the notebook shows the log as a table and a plot); an
    out-of-memory error comes back with advice for this section's settings. Returns the device it trained on."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    device = str(trainer.args.device)
    with logs.quiet(), oom_guard(section, recipe.settings_for_advice(settings, lora), device):
        trainer.train()
    return device


def save(params: "RunParams", section: Literal["sft", "rl"], trainer, tokenizer, lora: bool, clock, t0: float,
         facts: dict) -> dict:
    """Write the trained checkpoint, publish it for serving, and write log.jsonl, training.json and usage.json.
    `facts` are the stage's own summary entries; returns the summary."""
    import torch

    stage = stages.TRAINING[section]
    checkpoint = stage_dir(params, stage) / CHECKPOINT
    if lora:
        trainer.model.save_pretrained(checkpoint, selected_adapters=["default"])  # not TRL's frozen "ref" copy
    else:
        trainer.model.save_pretrained(checkpoint)
    (trainer.processing_class or tokenizer).save_pretrained(checkpoint)
    log = logs.step_log(trainer.state.log_history, clock.seconds)
    served = published.publish(params, stage, checkpoint, lora=lora,
                             state_dict=None if lora else trainer.model.state_dict())
    summary = logs.summarize(stage, log, clock.seconds, time.perf_counter() - t0, {
        **facts, "lora": lora, "checkpoint": str(checkpoint), "served": served["route"], "torch": torch.__version__})
    logs.write(params, section, log, summary)
    return summary
