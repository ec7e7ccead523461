"""Stages 04 (SFT) and 05 (RL): training the policy with TRL, in this process or under `accelerate launch`.

    from delib import training
    summary = training.run(params, "sft")      # or "rl"; reads sft:/rl: from params
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Literal

from delib.run import files, stages
from delib.run.io import write_json_atomic
from delib.run.paths import project_root, stage_dir
from delib.training import logs
from delib.training.errors import ChatTemplateError, EmptyDatasetError, OutOfMemoryError, TrainingError

if TYPE_CHECKING:
    from delib.run.config import RunParams

__all__ = ["ChatTemplateError", "EmptyDatasetError", "OutOfMemoryError", "TrainingError", "launch_command", "run"]


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
