"""`delib sweep SWEEP.yaml`: one base recipe, many runs (a grid of overrides or a list of named variants), run one
after another as ordinary run folders.

A sweep file:

    name: ablations                 # the summary folder: <outputs_dir>/sweeps/<name>
    base: params/default.yaml       # the recipe every run starts from (relative to the project root)
    grid:                           # every combination of these dotted keys ...
      rl.from_sft: [true, false]
      seed: [0, 1, 2]
    variants:                       # ... and/or named variants, each a set of dotted keys (not grid keys)
      - {name: long_sft, set: {sft.max_steps: 40}}

With both, every variant is crossed with every grid point; a variant may not set a key that the grid varies. Each run is named `<name>-<variant>-<key>_<value>...`, gets
its own params file in the summary folder (so that any run can be re-run or opened alone: `delib run
<that file> --resume`), and runs with resume semantics: an interrupted sweep picks up where it stopped. The runs share
the base recipe's model-call cache and converted base weights.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from delib.run.config import ParamsError, RunParams, validate_params
from delib.run.io import write_json_atomic
from delib.run.paths import project_root
from delib.run.runner import UsageError, parse_stages

SWEEP_KEYS = {"name", "base", "grid", "variants", "stages"}


class SweepError(ValueError):
    """A sweep file that cannot be run; the message says what and where."""


@dataclass
class SweepRun:
    name: str  # the run_name, also the run folder's name
    overrides: dict[str, Any]  # dotted key -> value (and "variant": the named variant's name, if any)
    params: RunParams
    params_file: Optional[Path] = None
    factors: dict[str, Any] = field(default_factory=dict)  # what the sweep varies: "variant" and each grid key


@dataclass
class Sweep:
    name: str
    base: Path
    runs: list[SweepRun]
    folder: Path  # the summary folder
    stages: Optional[str] = None
    source: Path = field(default_factory=Path)


def set_dotted(doc: dict, key: str, value: Any, where: str) -> None:
    """doc[a][b][c] = value for key "a.b.c"; the intermediate keys must be mappings of the recipe."""
    parts = key.split(".")
    node = doc
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise SweepError(f"{where}: {key!r}: {'.'.join(parts[:i + 1])} is not a mapping in the base recipe")
        node = nxt
    node[parts[-1]] = value


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"


def run_name(sweep: str, variant: Optional[str], point: dict[str, Any]) -> str:
    """`<sweep>-<variant>-<key>_<value>...` (the last part of each dotted key): the run folder's name, readable
    and stable, e.g. ablations-rl_only-seed_1 (seed -1: seed_-1)."""
    parts = ([_slug(variant)] if variant else []) + [f"{_slug(k.split('.')[-1])}_{_slug(v)}" for k, v in point.items()]
    return "-".join([sweep, *parts])


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every run's params are validated before any run starts."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file: {err}") from None
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys {', '.join(sorted(SWEEP_KEYS))}")
    unknown = set(doc) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {sorted(unknown)}; a sweep file has {', '.join(sorted(SWEEP_KEYS))}")
    name = doc.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"{path}: name: give the sweep a name of letters, digits, '_', '.', '-' (got {name!r})")
    root = project_root()
    base = root / str(doc.get("base", ""))
    if not doc.get("base") or not base.is_file():
        raise SweepError(f"{path}: base: {doc.get('base')!r} is not a recipe file (relative to {root})")
    try:
        base_doc = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{base}: the base recipe is not valid YAML: {err}") from None
    if not isinstance(base_doc, dict):
        raise SweepError(f"{base}: the base recipe must be a mapping of keys to values")
    if doc.get("stages") is not None:
        try:
            parse_stages(str(doc["stages"]))
        except UsageError as err:
            raise SweepError(f"{path}: stages: {err}") from None
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise SweepError(f"{path}: grid: a mapping of dotted keys to non-empty lists of values")
    variants = doc.get("variants") or []
    if not isinstance(variants, list) or any(not isinstance(v, dict) or set(v) - {"name", "set"} or
                                             not isinstance(v.get("name"), str) for v in variants):
        raise SweepError(f"{path}: variants: a list of {{name: ..., set: {{dotted.key: value}}}}")
    for v in variants:
        if not isinstance(v.get("set") or {}, dict):
            raise SweepError(f"{path}: variants: {v['name']}: set must be a mapping of dotted keys to values")
        clash = sorted(set(v.get("set") or {}) & set(grid))
        if clash:
            raise SweepError(f"{path}: variants: {v['name']} sets {clash}, which the grid varies: the grid's value "
                             "would win; vary it in one place")
    names = [v["name"] for v in variants]
    if len(set(names)) < len(names):
        raise SweepError(f"{path}: variants: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
    if not grid and not variants:
        raise SweepError(f"{path}: give a grid, variants, or both: a sweep of one run is `delib run`")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    runs, seen = [], set()
    for variant in (variants or [None]):
        for point in points:
            overrides = {**((variant or {}).get("set") or {}), **point}
            name_ = run_name(name, variant["name"] if variant else None, point)
            if name_ in seen:
                raise SweepError(f"{path}: two runs would both be named {name_!r} (their names drop characters a run "
                                 "name cannot hold, or repeat a variant): make the values or names distinct")
            seen.add(name_)
            recipe = copy.deepcopy(base_doc)
            for key, value in overrides.items():
                if key == "run_name":
                    raise SweepError(f"{path}: run_name is set by the sweep (one per run), not overridden")
                set_dotted(recipe, key, value, str(path))
            recipe["run_name"] = name_
            try:
                params = validate_params(recipe, f"{path} (run {name_})")
            except ParamsError as err:
                raise SweepError(str(err)) from None
            tag = {"variant": variant["name"]} if variant else {}
            runs.append(SweepRun(name_, {**tag, **overrides}, params, factors={**tag, **point}))
    folder = root / runs[0].params.outputs_dir / "sweeps" / name
    return Sweep(name, base, runs, folder, doc.get("stages"), path)


def write_run_params(sweep: Sweep) -> None:
    """Each run's complete recipe as a YAML file in the summary folder's params/ (what `delib run` takes)."""
    folder = sweep.folder / "params"
    folder.mkdir(parents=True, exist_ok=True)
    for r in sweep.runs:
        r.params_file = folder / f"{r.name}.yaml"
        text = yaml.safe_dump(r.params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        header = f"# Run {r.name} of sweep {sweep.name} ({sweep.source}): {json.dumps(r.overrides)}\n"
        if not r.params_file.is_file() or r.params_file.read_text(encoding="utf-8") != header + text:
            r.params_file.write_text(header + text, encoding="utf-8")


def run_sweep(sweep: Sweep, run: Callable[..., Path], log: Callable[[str], None] = print,
              check: bool = True) -> list[dict]:
    """Run every run of the sweep in order (`run` is runner.run), resuming each; a status row per run, written to
    sweep.json in the summary folder after each run. A failed run is recorded and the sweep goes on."""
    write_run_params(sweep)
    status = []
    for i, r in enumerate(sweep.runs, 1):
        log(f"== sweep {sweep.name}: run {i}/{len(sweep.runs)} {r.name} {json.dumps(r.overrides)}")
        t0 = time.perf_counter()
        row = {"run": r.name, "overrides": r.overrides, "factors": r.factors, "params_file": str(r.params_file)}
        try:
            rdir = run(r.params_file, stages=sweep.stages, resume=True, log=lambda s: log(f"   {s}"), check=check)
            row.update(status="ok", run_dir=str(rdir))
        except KeyboardInterrupt:
            row.update(status="interrupted")
            status.append(row)
            _write_status(sweep, status)
            raise
        except Exception as err:  # a failed stage or a bad recipe: recorded, the other runs still run
            row.update(status="failed", error=str(err)[:2000])
            log(f"   failed: {err}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        status.append(row)
        _write_status(sweep, status)
        log(f"== run {i}/{len(sweep.runs)} {r.name}: {row['status']} in {row['seconds']:.0f} s")
    return status


def _write_status(sweep: Sweep, status: list[dict]) -> None:
    write_json_atomic(sweep.folder / "sweep.json", {"name": sweep.name, "base": str(sweep.base),
                                                    "source": str(sweep.source), "runs": status})
