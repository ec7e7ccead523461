"""Stages 04-05: the errors training stops with, each saying what to change."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says what to change."""


class EmptyDatasetError(TrainingError):
    """Nothing survived filtering: the message shows stage 03's funnel."""


class ChatTemplateError(TrainingError):
    """The model has no chat template to lay out (prompt, CoT, answer)."""


class OutOfMemoryError(TrainingError):
    """Training ran out of memory; the message names the settings to lower."""


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "failed to allocate" in text)


def oom_advice(section: str, settings: dict) -> str:
    """Which settings of `section` (sft or rl) to lower, with their current values, most effective first."""
    order = ["per_device_train_batch_size", "max_length", "max_completion_length", "num_generations", "lora_r"]
    lines = [f"  {section}.{k}: {settings[k]} (lower it)" for k in order if k in settings]
    if "per_device_train_batch_size" in settings:
        lines.append(f"  {section}.gradient_accumulation_steps: {settings.get('gradient_accumulation_steps', 1)} "
                     "(raise it to keep the effective batch while lowering the batch size)")
    if not settings.get("gradient_checkpointing"):
        lines.append(f"  {section}.gradient_checkpointing: false (set true: less memory, ~30% more time)")
    if settings.get("lora") is False:
        lines.append(f"  {section}.lora: false (LoRA trains far fewer parameters: set true)")
    if settings.get("dtype") == "float32":
        lines.append(f"  {section}.dtype: float32 (bfloat16 halves the weights' memory, on a GPU)")
    return "\n".join(lines)


@contextlib.contextmanager
def oom_guard(section: str, settings: dict, device: Optional[str] = None) -> Iterator[None]:
    """Turn running out of memory (CPU or GPU) into an OutOfMemoryError that says which settings to lower."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - only memory errors are translated
        if not _is_oom(err):
            raise
        where = f" on {device}" if device else ""
        raise OutOfMemoryError(f"stage {section} ran out of memory{where} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Lower, in params:\n"
                               f"{oom_advice(section, settings)}") from err
