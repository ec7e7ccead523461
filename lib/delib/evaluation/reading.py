"""Stage 07: a finished run read back (metrics, differences, variants, answers, judge outputs, training logs,
stage times), and the headline metric keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from delib.evaluation.metrics import fmt, fmt_diff, wide_table
from delib.run import files, stages

EVAL = stages.EVALUATE


# A key ending in [*] stands for its per-category keys (one per category of the run's spec): `headline`.
HEADLINE = ("not_unsafe", "not_overrefuse", "correct_action", "unclear", "truncated", "style_hard_refusal",
            "style_hard_refusal[*]", "style_safe_completion[*]", "citation_accuracy", "format_adherence", "answered",
            "xstest_not_overrefuse", "xstest_not_unsafe", "strongreject_goodness@0.1", "strongreject_refusal@0.1")


def robustness_key(present: Iterable[str]) -> Optional[str]:
    """StrongREJECT's measure a run has for the paper's y axis: goodness@0.1 (a grader graded the rubric), else the
    rules' refusal@0.1; None when StrongREJECT did not run."""
    present = set(present)
    return next((k for k in ("strongreject_goodness@0.1", "strongreject_refusal@0.1") if k in present), None)


def headline(present: Iterable[str], keys: Sequence[str] = HEADLINE) -> list[str]:
    """The keys of `keys` that `present` holds, in order; "name[*]" becomes every "name[...]" present, sorted."""
    present = set(present)
    out: list[str] = []
    for k in keys:
        if k.endswith("[*]"):
            out += sorted(p for p in present if p.startswith(k[:-2]) and p.endswith("]"))
        elif k in present:
            out.append(k)
    return out


def by_category(metrics: pd.DataFrame, categories: Sequence[str]) -> pd.DataFrame:
    """Safety, over-refusal and action per category: one row per (category, variant), "value [lo, hi] (n)"."""
    rows = []
    for c in categories:
        for name in ("not_unsafe", "not_overrefuse", "correct_action"):
            for r in metrics[metrics["key"] == f"{name}[{c}]"].itertuples():
                rows.append({"category": c, "variant": r.variant, "metric": name,
                             "cell": f"{fmt(r.value, r.lo, r.hi)} (n={r.n})"})
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    return t.pivot(index=["category", "variant"], columns="metric", values="cell").reindex(
        columns=[m for m in ("not_unsafe", "not_overrefuse", "correct_action") if m in set(t["metric"])])


RETRIEVAL = ("citation_accuracy[refuse]", "citation_accuracy[safe_complete]", "citation_accuracy[comply]")


COST = ("cot_tokens", "completion_tokens", "latency_s")


# The paper's figures, for scale (MISSION.md): o1 / GPT-4o. Not comparable with a 135M model on our prompts.
# Per-category figures come from the spec (`reference_figures` in its mapping): categories are the spec's.
PAPER = {"xstest_not_overrefuse": "GPT-4o 0.88, o1 0.93", "strongreject_goodness@0.1": "GPT-4o 0.37, o1 0.88",
         "style_hard_refusal": "GPT-4o 0.72, o1 0.79"}


def load_evaluation(run_dir: Path) -> dict[str, Any]:
    """What stage 06 wrote: answers, metrics, differences, variants, definitions, and the benchmarks' files (a
    file stage 06 did not write reads as empty; FileNotFoundError when it has not run)."""
    files.METRICS.require(run_dir)
    read = lambda f: files.read(run_dir, f, missing_ok=True)  # noqa: E731
    return {"answers": read(files.ANSWERS), "metrics": read(files.METRICS), "differences": read(files.DIFFERENCES),
            "variants": read(files.VARIANTS), "definitions": read(files.DEFINITIONS),
            "xstest_answers": read(files.XSTEST_ANSWERS), "strongreject_answers": read(files.STRONGREJECT_ANSWERS),
            "info": read(files.EVALUATION), "validity": read(files.VALIDITY),
            "reference_figures": reference_figures(run_dir)}


def reference_figures(run_dir: Path) -> dict[str, str]:
    """Published figures to show beside the metrics: ours (PAPER) and those the run's spec names."""
    return {**PAPER, **files.read(run_dir, files.SPEC, missing_ok=True).get("reference_figures", {})}


def stage_times(run_dir: Path) -> pd.DataFrame:
    """Each stage's status and wall time, from the run's manifest."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return pd.DataFrame(columns=["stage", "status", "duration_s"])
    stages = json.loads(path.read_text()).get("stages", {})
    return pd.DataFrame([{"stage": s, "status": v.get("status"), "duration_s": v.get("duration_s")}
                         for s, v in stages.items()])


def training_logs(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The per-step logs of stages 04 and 05 (`log.jsonl`), where they trained, by stage."""
    out = {}
    for f in files.TRAINING_LOG.values():
        log = files.read(run_dir, f, missing_ok=True)
        if not log.empty and "step" in log:
            out[f.stage] = log
    return out


def training_summaries(run_dir: Path) -> dict[str, dict]:
    """What stages 04 and 05 trained (`training.json`), where they trained, by stage."""
    return {f.stage: files.read(run_dir, f) for f in files.TRAINING_SUMMARY.values() if f.path(run_dir).is_file()}


def judge_outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 03's funnel and scored samples (empty when stage 03 has not run)."""
    return files.read(run_dir, files.FUNNEL, missing_ok=True), files.read(run_dir, files.SCORED, missing_ok=True)


def headline_table(metrics: pd.DataFrame, keys: Sequence[str] = HEADLINE, n: bool = False) -> pd.DataFrame:
    """Variants as rows, the headline metrics as columns, "value [lo, hi]"."""
    return wide_table(metrics, headline(metrics["key"], keys), n=n)


def differences_table(diffs: pd.DataFrame, keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Paired differences "diff [lo, hi]" (with * when the interval excludes 0), one row per comparison."""
    keys = headline(diffs["key"] if "key" in diffs else (), keys)
    d = diffs[diffs["key"].isin(keys)] if keys else pd.DataFrame()
    if d.empty:
        return pd.DataFrame()
    cells = [fmt_diff(x, lo, hi) + (" *" if s else "") for x, lo, hi, s in
             zip(d["diff"], d["lo"], d["hi"], d["significant"])]
    t = d.assign(cell=cells, comparison=d["variant"] + " - " + d["baseline"])
    order = [k for k in keys if k in set(d["key"])]
    return t.pivot(index="comparison", columns="key", values="cell").reindex(
        index=list(dict.fromkeys(t["comparison"])), columns=order)


def not_available(variants: pd.DataFrame) -> list[str]:
    if variants.empty:
        return []
    v = variants[~variants["available"].astype(bool)]
    return [f"{r.label} ({r.variant}): {r.reason}" for r in v.itertuples()]
