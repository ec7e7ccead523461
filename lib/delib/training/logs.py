"""Stages 04-05: what training leaves in the stage folder: the per-step log, speed, and the start and end values.

`log.jsonl` holds TRL's per-step log (loss; for RL reward, KL, completion lengths) with each step's wall time;
`training.json` the summary (seconds per step, tokens per second, first and last loss or reward). The speed also
goes into the stage's usage.json, the file the runner sums into the manifest. While training runs, `progress.json`
says how far it got, so that a long run can be watched and an interrupted one says where it stopped.
"""
from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from pathlib import Path
from typing import Literal, Optional

import pandas as pd

from delib.models.usage import Usage, add_usage
from delib.run import files
from delib.run.figures import plt, save
from delib.run.io import write_json_atomic


def step_clock(progress: Optional[Path] = None):
    """A transformers callback that times each optimizer step (wall seconds, in `.seconds`); with `progress`, it
    also writes {"step", "max_steps", "seconds"} there when training starts and after every step (main process
    only): the log files are written only at the end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._t0: Optional[float] = None

        def _report(self, state) -> None:
            if progress is not None and state.is_world_process_zero:
                write_json_atomic(progress, {"step": state.global_step, "max_steps": state.max_steps,
                                             "seconds": round(sum(self.seconds), 2)})

        def on_train_begin(self, args, state, control, **kw):
            self._report(state)  # step 0: replaces what an earlier run of the stage left

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t0 is not None:
                self.seconds.append(time.perf_counter() - self._t0)
                self._t0 = None
            self._report(state)

    return StepClock()


def step_log(log_history: list[dict], seconds: list[float]) -> pd.DataFrame:
    """One row per optimizer step from the trainer's log history, with the step's wall time."""
    rows = [dict(r) for r in log_history if "step" in r and "train_runtime" not in r and "loss" in r]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.drop(columns=[c for c in ("epoch",) if c in df]).reset_index(drop=True)
    df.insert(1, "seconds", [round(s, 3) for s in seconds[: len(df)]] + [None] * max(0, len(df) - len(seconds)))
    return df


def summarize(stage: str, log: pd.DataFrame, seconds: list[float], wall_s: float, extra: dict) -> dict:
    """The stage's training summary: steps, speed, and the first and last values of its curves."""
    tokens = int(log["num_tokens"].iloc[-1]) if "num_tokens" in log and not log.empty else None
    train_s = sum(seconds)
    summary = {
        "stage": stage, "steps": len(log), "train_seconds": round(train_s, 2), "wall_seconds": round(wall_s, 2),
        "seconds_per_step_median": round(statistics.median(seconds), 3) if seconds else None,
        "seconds_per_step_mean": round(train_s / len(seconds), 3) if seconds else None,
        "tokens": tokens,  # tokens the model processed (prompt and completion), as TRL counts them
        "tokens_per_second": round(tokens / train_s, 1) if tokens and train_s else None,
    }
    for col in ("loss", "reward", "kl"):
        if col in log and log[col].notna().any():
            values = log[col].dropna()
            summary[f"{col}_first"], summary[f"{col}_last"] = round(float(values.iloc[0]), 4), round(float(values.iloc[-1]), 4)
    summary.update(extra)
    return summary


def write(where: files.Where, which: Literal["sft", "rl"], log: pd.DataFrame, summary: dict) -> None:
    """The stage's log.jsonl and training.json, and its speed in usage.json under "<which>_trainer" (requests:
    optimizer steps, prompt_tokens: tokens processed, wall_s: training seconds), which the runner adds to the
    manifest. `where`: the run's params or folder."""
    files.write(where, files.TRAINING_LOG[which], log)
    path = files.write(where, files.TRAINING_SUMMARY[which], summary)
    add_usage(path.parent, f"{which}_trainer", Usage(requests=summary["steps"], prompt_tokens=summary["tokens"] or 0,
                                                     wall_s=summary["train_seconds"]))


def read(where: files.Where, which: Literal["sft", "rl"]) -> tuple[pd.DataFrame, dict]:
    """What a finished training stage wrote: its per-step log and its summary."""
    return files.read(where, files.TRAINING_LOG[which]), files.read(where, files.TRAINING_SUMMARY[which])


def plot_curves(log: pd.DataFrame, panels: dict[str, list[str]], path: Path, title: str = "") -> Path:
    """One small panel per entry of `panels` ({title: [log columns]}), each column against the step."""
    panels = {t: [c for c in cols if c in log] for t, cols in panels.items()}
    panels = {t: cols for t, cols in panels.items() if cols}
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.4 * max(1, len(panels)), 2.6), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels.items()):
        for col in cols:
            ax.plot(log["step"], log[col], marker="o", markersize=3, label=col)
        ax.set(title=name, xlabel="step")
        if len(cols) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


@contextlib.contextmanager
def quiet():
    """Training without progress bars, per-step prints or library warnings in the notebook: the stage shows its
    own table and plots, and the log file keeps the rest."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # also the warnings raised while importing (tqdm's IProgress, ...)
        import datasets
        import transformers

        was_bars = datasets.is_progress_bar_enabled()
        was_hf_bars = transformers.utils.logging.is_progress_bar_enabled()
        verbosity = transformers.logging.get_verbosity()
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.logging.set_verbosity_error()
        try:
            yield
        finally:
            if was_bars:
                datasets.enable_progress_bars()
            if was_hf_bars:
                transformers.utils.logging.enable_progress_bar()
            transformers.logging.set_verbosity(verbosity)
