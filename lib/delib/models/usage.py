"""Token and time accounting per stage and per model role, for the run manifest.

Each stage folder gets a `usage.json` mapping role names to totals; every `chat_many` adds to it. The runner
sums these files into the manifest.
"""
from __future__ import annotations

import fcntl
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from delib.run.io import write_json_atomic
from delib.run.stages import USAGE_FILE


@dataclass
class Usage:
    """Totals of one role in one stage. Tokens count calls actually made: a cache hit costs none."""

    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those the server did not read again (a prefix it kept)
    completion_tokens: int = 0
    wall_s: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def as_dict(self) -> dict:
        d = asdict(self)
        d["wall_s"] = round(d["wall_s"], 3)
        return d


def read_usage(stage_dir: str | Path) -> dict[str, Usage]:
    """The totals recorded in a stage folder, per role name ({} when none)."""
    path = Path(stage_dir) / USAGE_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {role: Usage(**totals) for role, totals in data.items()}


def add_usage(stage_dir: str | Path, role_name: str, usage: Usage) -> dict[str, Usage]:
    """Add `usage` to the role's totals in `<stage_dir>/usage.json`; returns the new totals of every role."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with open(stage_dir / f".{USAGE_FILE}.lock", "w") as lock:  # two processes of one stage must not race
        fcntl.flock(lock, fcntl.LOCK_EX)
        totals = read_usage(stage_dir)
        totals[role_name] = totals.get(role_name, Usage()) + usage
        write_json_atomic(stage_dir / USAGE_FILE, {r: u.as_dict() for r, u in sorted(totals.items())})
    return totals
