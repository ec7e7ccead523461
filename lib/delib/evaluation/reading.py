"""Stage 07: a finished run read back (metrics, differences, variants, answers, judge outputs, training logs,
stage times), and the headline metric keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from delib.evaluation.metrics import fmt, fmt_diff, wide_table
from delib.run import stages

EVAL = stages.EVALUATE


# A key ending in [*] stands for its per-category keys (one per category of the run's spec): `headline`.
HEADLINE = ("not_unsafe", "not_overrefuse", "correct_action", "unclear", "truncated", "style_hard_refusal",
            "style_hard_refusal[*]", "style_safe_completion[*]", "citation_accuracy", "format_adherence", "answered",
            "xstest_not_overrefuse", "xstest_not_unsafe", "strongreject_goodness@0.1")


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


VALIDITY_FILE = "grader_validity.json"  # the rule graders against human labels (evaluation.validity)


# The paper's figures, for scale (MISSION.md): o1 / GPT-4o. Not comparable with a 135M model on our prompts.
# Per-category figures come from the spec (`reference_figures` in its mapping): categories are the spec's.
PAPER = {"xstest_not_overrefuse": "GPT-4o 0.88, o1 0.93", "strongreject_goodness@0.1": "GPT-4o 0.37, o1 0.88",
         "style_hard_refusal": "GPT-4o 0.72, o1 0.79"}


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype={"prompt_id": str}) if path.is_file() and path.stat().st_size \
        else pd.DataFrame()


def load_evaluation(run_dir: Path) -> dict[str, Any]:
    """What stage 06 wrote: answers, metrics, differences, variants, definitions, and the benchmarks' files."""
    d = Path(run_dir) / EVAL
    if not (d / "metrics.csv").is_file():
        raise FileNotFoundError(f"{d / 'metrics.csv'} is missing: run stage 06_evaluate first "
                                "(delib run PARAMS --stages 06)")
    read = lambda name: pd.read_csv(d / name) if (d / name).is_file() else pd.DataFrame()  # noqa: E731
    return {"answers": _read_jsonl(d / "answers.jsonl"), "metrics": read("metrics.csv"),
            "differences": read("differences.csv"), "variants": read_variants(d / "variants.csv"),
            "definitions": read("definitions.csv"), "xstest_answers": _read_jsonl(d / "xstest_answers.jsonl"),
            "strongreject_answers": _read_jsonl(d / "strongreject_answers.jsonl"),
            "info": json.loads((d / "evaluation.json").read_text()) if (d / "evaluation.json").is_file() else {},
            "validity": json.loads((d / VALIDITY_FILE).read_text()) if (d / VALIDITY_FILE).is_file() else {},
            "reference_figures": reference_figures(run_dir)}


def reference_figures(run_dir: Path) -> dict[str, str]:
    """Published figures to show beside the metrics: ours (PAPER) and those the run's spec names."""
    spec = Path(run_dir) / stages.POLICY / "spec.json"
    own = json.loads(spec.read_text()).get("reference_figures", {}) if spec.is_file() else {}
    return {**PAPER, **own}


def stage_times(run_dir: Path) -> pd.DataFrame:
    """Each stage's status and wall time, from the run's manifest."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return pd.DataFrame(columns=["stage", "status", "duration_s"])
    stages = json.loads(path.read_text()).get("stages", {})
    return pd.DataFrame([{"stage": s, "status": v.get("status"), "duration_s": v.get("duration_s")}
                         for s, v in stages.items()])


def training_logs(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The per-step logs of stages 04 and 05 (`log.jsonl`), where they trained."""
    out = {}
    for stage in (stages.SFT, stages.RL):
        log = _read_jsonl(Path(run_dir) / stage / "log.jsonl")
        if not log.empty and "step" in log:
            out[stage] = log
    return out


def training_summaries(run_dir: Path) -> dict[str, dict]:
    out = {}
    for stage in (stages.SFT, stages.RL):
        path = Path(run_dir) / stage / "training.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


def judge_outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 03's funnel and scored samples (empty when stage 03 has not run)."""
    d = Path(run_dir) / stages.JUDGE
    funnel = pd.read_csv(d / "funnel.csv") if (d / "funnel.csv").is_file() else pd.DataFrame()
    return funnel, _read_jsonl(d / "scored.jsonl")


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


def read_variants(path: Path) -> pd.DataFrame:
    """variants.csv with empty text cells kept empty (not NaN)."""
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()
