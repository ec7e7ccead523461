"""Stages 04 (SFT) and 05 (RL): training the policy with TRL, in this process or under `accelerate launch`.

    from delib import training
    summary = training.run(params, "sft")      # or "rl"; reads sft:/rl: from params
    trained = training.train(params, "sft", panels, plot_path)  # the same, then its log and curves
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from delib.run import files, stages
from delib.run.io import write_json_atomic
from delib.run.paths import project_root, stage_dir
from delib.training import logs
from delib.training.errors import ChatTemplateError, EmptyDatasetError, OutOfMemoryError, TrainingError

if TYPE_CHECKING:
    from delib.run.config import RunParams

__all__ = ["ChatTemplateError", "EmptyDatasetError", "OutOfMemoryError", "TrainingError", "Trained", "launch_command",
           "run", "train"]


def launch_command(params: "RunParams", stage: Literal["sft", "rl"]) -> list[str]:
    """`accelerate launch` of this stage on `num_processes` processes; the validated params travel as a file."""
    section = getattr(params, stage)
    params_file = stage_dir(params, stages.TRAINING[stage]) / "params.json"
    write_json_atomic(params_file, params.model_dump(mode="json"))
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(section.num_processes),
            "-m", "delib.training", stage, str(params_file)]


def run(params: "RunParams", stage: Literal["sft", "rl"]) -> dict:
    """Train one stage and return its summary (training.json): in this process, or, when `num_processes` > 1,
    under accelerate (DeepSpeed when `deepspeed` names a config), the same code in each process."""
    if stage not in stages.TRAINING:
        raise ValueError(f"stage is 'sft' or 'rl', not {stage!r}")
    section = getattr(params, stage)
    if section.backend != "trl":
        raise TrainingError(f"{stage}.backend is {section.backend!r}: use delib.training.openai_ft for OpenAI jobs")
    if section.num_processes > 1:
        env = {**os.environ, "DELIB_ROOT": str(project_root())}
        done = subprocess.run(launch_command(params, stage), env=env, cwd=project_root())
        if done.returncode:
            raise TrainingError(f"accelerate launch of stage {stage} exited with {done.returncode}; its output is "
                                f"in the stage log")
        return files.read(params, files.TRAINING_SUMMARY[stage])
    with logs.quiet():  # TRL's imports and trainers print progress bars and warnings; the stage log keeps them
        if stage == "sft":
            from delib.training.sft import train  # late: only the stage that runs is loaded
        else:
            from delib.training.rl import train
        return train(params)


@dataclass
class Trained:
    summary: dict                   # training.json: steps, speed, first and last loss (SFT) or reward and KL (RL)
    log: pd.DataFrame               # log.jsonl: one row per optimizer step
    plot: Path                      # the curves per step, drawn


def train(params: "RunParams", stage: Literal["sft", "rl"], panels: dict[str, list[str]], plot: Path) -> Trained:
    """`run`, then the stage's log read back and `panels` ({title: [log columns]}) drawn per step to `plot`."""
    summary = run(params, stage)
    log, _ = logs.read(params, stage)
    return Trained(summary, log, logs.plot_curves(log, panels, plot))
