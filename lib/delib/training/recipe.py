"""Stages 04-05: the one place where the recipe (params `sft:` and `rl:`) maps onto TRL's and PEFT's configs.

The same params run on 2 CPU cores, on a GPU, or on several under accelerate or DeepSpeed: only the values change
(see params/gpu_example.yaml). Any other TRL field goes through `trl_args`, checked against TRL's config.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from delib.models.servers import cpu_count
from delib.run.paths import resolve
from delib.training.errors import TrainingError

if TYPE_CHECKING:
    from trl import GRPOConfig, SFTConfig

    from delib.run.config import RLParams, RunParams, SFTParams

# Set by the recipe itself; trl_args may not override them (say why in the error).
OWNED = {"output_dir": "the stage folder", "seed": "the run's seed", "data_seed": "the run's seed",
         "report_to": "the stage's log files", "save_strategy": "the stage saves its own checkpoint"}


def threads(section: Union["SFTParams", "RLParams"]) -> int:
    """Set torch's CPU threads from params (null: every core this process may use); returns the number."""
    import torch

    n = section.num_threads or cpu_count()
    torch.set_num_threads(n)
    return n


def torch_dtype(section: Union["SFTParams", "RLParams"]):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[section.dtype]


def lora_config(sft: "SFTParams"):
    """PEFT's LoraConfig from `sft.lora_*` (RL continues the same adapter)."""
    from peft import LoraConfig

    targets: Any = sft.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def _common(section: Union["SFTParams", "RLParams"], seed: int, output_dir: Path) -> dict:
    """TrainingArguments shared by SFT and GRPO."""
    return {
        "output_dir": str(output_dir), "seed": seed, "data_seed": seed,
        "max_steps": section.max_steps, "learning_rate": section.learning_rate,
        "lr_scheduler_type": section.lr_scheduler_type,
        "per_device_train_batch_size": section.per_device_train_batch_size,
        "gradient_accumulation_steps": section.gradient_accumulation_steps,
        "bf16": section.dtype == "bfloat16", "fp16": section.dtype == "float16",
        "deepspeed": (str(resolve(section.deepspeed)) if isinstance(section.deepspeed, str)
                      else section.deepspeed or None),
        "logging_steps": 1,  # one log line per optimizer step: the loss/reward curves
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0,
    }


def _with_overrides(config_cls, kwargs: dict, trl_args: dict, section: str, checkpointing: bool = False):
    """Build `config_cls(**kwargs)` with `trl_args` on top, refusing unknown or owned names by their params key."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    # transformers 5 renamed gradient_checkpointing (and warns on the old name, even when false)
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    kwargs = {**kwargs, name: checkpointing}
    for key in trl_args:
        if key not in fields:
            raise TrainingError(f"{section}.trl_args.{key}: {config_cls.__name__} has no field {key!r}")
        if key in OWNED:
            raise TrainingError(f"{section}.trl_args.{key}: set by the recipe ({OWNED[key]})")
    try:
        return config_cls(**{**kwargs, **trl_args})
    except (ValueError, TypeError) as err:
        raise TrainingError(f"{section}: TRL refused the settings: {err}") from None


def sft_config(params: "RunParams", output_dir: Path) -> "SFTConfig":
    """TRL's SFTConfig for stage 04: loss on the completion only (the assistant turn: CoT and answer)."""
    from trl import SFTConfig

    s = params.sft
    kwargs = _common(s, params.seed, output_dir)
    kwargs.update({
        "num_train_epochs": s.num_train_epochs, "warmup_steps": s.warmup_steps,
        "max_length": s.max_length, "truncation_mode": "keep_start",
        "completion_only_loss": True,  # prompt-completion rows: the user turn carries no loss
        "packing": False,
    })
    return _with_overrides(SFTConfig, kwargs, s.trl_args, "sft", s.gradient_checkpointing)


def grpo_config(params: "RunParams", output_dir: Path) -> "GRPOConfig":
    """TRL's GRPOConfig for stage 05: groups of `num_generations` completions per prompt, KL to the start."""
    from trl import GRPOConfig

    r = params.rl
    kwargs = _common(r, params.seed, output_dir)
    kwargs.update({
        "num_generations": r.num_generations, "max_completion_length": r.max_completion_length,
        "temperature": r.temperature, "top_p": 1.0, "beta": r.beta,
        "remove_unused_columns": False,  # the reward reads category and expected_action
        # A completion cut off by max_completion_length is kept in the loss (TRL's default): its visible answer is
        # graded like any other, and one cut inside its CoT shows the user nothing and earns 0. With a tight budget
        # that favours short CoTs; raise max_completion_length (or set trl_args mask_truncated_completions: true).
        "mask_truncated_completions": False,
        "log_completions": False,
    })
    return _with_overrides(GRPOConfig, kwargs, r.trl_args, "rl", r.gradient_checkpointing)


def settings_for_advice(section: Union["SFTParams", "RLParams"], lora: bool) -> dict:
    """The params an out-of-memory message names (see errors.oom_advice)."""
    d = section.model_dump()
    d["lora"] = lora
    return d


def is_main_process() -> bool:
    """False in the extra processes of an accelerate/torchrun launch: only rank 0 writes the stage's files."""
    return int(os.environ.get("RANK", "0")) == 0
