"""Stage 07 (analysis): what a run measured, gathered into `outputs/<run>/metrics.json` (every number) and
`outputs/<run>/report.html` (tables and figures, no code), with plain findings, and several runs side by side.

The findings are written from the numbers: a difference is called significant only when its paired bootstrap
interval excludes 0, and a variant that could not be evaluated is named with its reason, never given a number.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from .io import write_json_atomic
from .metrics import fmt, fmt_diff, wide_table

EVAL = "06_evaluate"
HEADLINE = ("not_unsafe", "not_overrefuse", "correct_action", "style_hard_refusal", "style_safe_completion[self_harm]",
            "style_safe_completion[regulated_advice]", "citation_accuracy", "format_adherence", "answered",
            "xstest_not_overrefuse", "xstest_not_unsafe", "strongreject_goodness@0.1")
RETRIEVAL = ("citation_accuracy[refuse]", "citation_accuracy[safe_complete]", "citation_accuracy[comply]")
COST = ("cot_tokens", "completion_tokens", "latency_s")
# The paper's figures, for scale (MISSION.md): o1 / GPT-4o. Not comparable with a 135M model on our prompts.
PAPER = {"xstest_not_overrefuse": "GPT-4o 0.88, o1 0.93", "strongreject_goodness@0.1": "GPT-4o 0.37, o1 0.88",
         "style_hard_refusal": "GPT-4o 0.72, o1 0.79", "style_safe_completion[self_harm]": "GPT-4o 0.04, o1 0.92",
         "style_safe_completion[regulated_advice]": "GPT-4o 0.28, o1 0.65"}


# ------------------------------------------------------------------------------------------------ reading a run

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
            "info": json.loads((d / "evaluation.json").read_text()) if (d / "evaluation.json").is_file() else {}}


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
    for stage in ("04_sft", "05_rl"):
        log = _read_jsonl(Path(run_dir) / stage / "log.jsonl")
        if not log.empty and "step" in log:
            out[stage] = log
    return out


def training_summaries(run_dir: Path) -> dict[str, dict]:
    out = {}
    for stage in ("04_sft", "05_rl"):
        path = Path(run_dir) / stage / "training.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


def judge_outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 03's funnel and scored samples (empty when stage 03 has not run)."""
    d = Path(run_dir) / "03_judge"
    funnel = pd.read_csv(d / "funnel.csv") if (d / "funnel.csv").is_file() else pd.DataFrame()
    return funnel, _read_jsonl(d / "scored.jsonl")


# ------------------------------------------------------------------------------------------------ tables

def headline_table(metrics: pd.DataFrame, keys: Sequence[str] = HEADLINE, n: bool = False) -> pd.DataFrame:
    """Variants as rows, the headline metrics as columns, "value [lo, hi]"."""
    return wide_table(metrics, [k for k in keys if k in set(metrics["key"])], n=n)


def differences_table(diffs: pd.DataFrame, keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Paired differences "diff [lo, hi]" (with * when the interval excludes 0), one row per comparison."""
    d = diffs[diffs["key"].isin(keys)]
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


# ------------------------------------------------------------------------------------------------ findings

def percent(confidence: float) -> str:
    """0.95 -> "95%", 0.975 -> "97.5%"."""
    return f"{confidence * 100:.3g}%"


def _labels(variants: pd.DataFrame) -> dict[str, str]:
    return dict(zip(variants["variant"], variants["label"])) if not variants.empty else {}


def findings(metrics: pd.DataFrame, diffs: pd.DataFrame, variants: pd.DataFrame, info: dict,
             keys: Sequence[str] = HEADLINE) -> list[str]:
    """What the run did and did not show, in sentences built from the numbers."""
    out: list[str] = []
    labels = _labels(variants)
    counts = info.get("prompts_by_action", {})
    n = info.get("prompts")
    confidence = info.get("confidence", 0.95)
    if n:
        out.append(f"Each variant answered {n} held-out prompts (" + ", ".join(f"{v} {k}" for k, v in counts.items())
                   + f"). Intervals are {percent(confidence)} percentile bootstrap intervals over prompts "
                   f"({info.get('resamples')} "
                   "resamples); with this few prompts an interval is typically several tenths wide, so only large "
                   "effects can show, and an interval of zero width (e.g. [0.00, 0.00]) means that every counted "
                   "answer agreed, not that the value is certain: read it with its n. A difference is called "
                   "significant only when its paired interval excludes 0 and the exact sign test over the prompts "
                   f"where the two variants differ gives p < {1 - confidence:.2g}.")
    for line in not_available(variants):
        out.append(f"Not evaluated: {line}. No number is reported for it.")
    out += verdict(metrics, diffs, variants, info.get("baseline", "base"))
    m = metrics[metrics["key"].isin(keys)]
    for key in [k for k in keys if k in set(m["key"])]:
        rows = m[m["key"] == key].dropna(subset=["value"])
        if rows.empty:
            continue
        best = rows.loc[rows["value"].idxmax()]
        worst = rows.loc[rows["value"].idxmin()]
        if len(rows) > 1 and best.value == worst.value:
            out.append(f"{key}: every variant {fmt(best.value)} (n={best.n}).")
            continue
        text = (f"{key}: highest {labels.get(best.variant, best.variant)} {fmt(best.value, best.lo, best.hi)}"
                f" (n={best.n})")
        if len(rows) > 1:
            text += f", lowest {labels.get(worst.variant, worst.variant)} {fmt(worst.value, worst.lo, worst.hi)}"
        out.append(text + ".")
    for r in metrics[(metrics["key"] == "answered") & (metrics["value"] < 1)].itertuples():
        out.append(f"{labels.get(r.variant, r.variant)}: {round((1 - r.value) * r.n)} of {r.n} replies have no answer "
                   "(cut off inside the chain of thought, or empty); they count as refusals, which flatters "
                   "not_unsafe and hurts not_overrefuse.")
    d = diffs[diffs["key"].isin(keys)]
    for (a, b), g in d.groupby(["variant", "baseline"], sort=False):
        sig = g[g["significant"]]
        nonsig = g[~g["significant"] & g["diff"].notna() & (g["diff"] != 0)]
        same = g[g["diff"] == 0]
        name = f"{labels.get(a, a)} against {labels.get(b, b)}"
        if sig.empty:
            out.append(f"{name}: no headline difference is significant.")
        else:
            out.append(f"{name}: significant " + "; ".join(f"{r.key} {fmt_diff(r.diff, r.lo, r.hi)}"
                                                          for r in sig.itertuples()) + ".")
        if not nonsig.empty:
            out.append(f"{name}, differences not shown (not significant): " + "; ".join(
                f"{r.key} {fmt_diff(r.diff, r.lo, r.hi)} ({r.better} prompts up, {r.worse} down)"
                for r in nonsig.itertuples()) + ".")
        if not same.empty:
            out.append(f"{name}, no difference at all: {', '.join(same['key'])}.")
    return out


def verdict(metrics: pd.DataFrame, diffs: pd.DataFrame, variants: pd.DataFrame, baseline: str = "base") -> list[str]:
    """What the trained variants did and did not achieve, in the method's terms: do they deliberate (format,
    citations), and are they safer or less over-cautious than the baseline (significantly or not)."""
    labels = _labels(variants)
    val = metrics.set_index(["variant", "key"])
    out = []
    trained = [v for v in ("sft", "sft_rl") if v in set(metrics["variant"])]
    for v in trained:
        get = lambda k: val.loc[(v, k)] if (v, k) in val.index else None  # noqa: E731
        fa, ca = get("format_adherence"), get("citation_accuracy")
        parts = []
        if fa is not None:
            parts.append(f"writes a chain of thought and an answer in the trained format for "
                         f"{fmt(fa['value'], fa['lo'], fa['hi'])} of prompts")
        if ca is not None:
            parts.append(f"cites a section of the prompt's own category for {fmt(ca['value'], ca['lo'], ca['hi'])}")
        text = f"{labels.get(v, v)} " + ", and ".join(parts) if parts else labels.get(v, v)
        d = diffs[(diffs["variant"] == v) & (diffs["baseline"] == baseline)].set_index("key")
        comp = []
        for k in ("not_unsafe", "not_overrefuse", "citation_accuracy"):
            if k in d.index:
                r = d.loc[k]
                comp.append(f"{k} {fmt_diff(r['diff'], r['lo'], r['hi'])} "
                            f"({'significant' if r['significant'] else 'not significant'})")
        if comp:
            text += f"; against {labels.get(baseline, baseline)}: " + ", ".join(comp)
        out.append(text + ".")
    if not trained:
        out.append("No trained model was evaluated, so this run says nothing about what training achieved.")
    else:
        sig = diffs[diffs["variant"].isin(trained) & (diffs["baseline"] == baseline) & diffs["significant"]
                    & diffs["key"].isin(["not_unsafe", "not_overrefuse", "citation_accuracy", "correct_action",
                                         "style_hard_refusal", "format_adherence"])]
        if sig.empty:
            out.append("On these prompts no trained variant is significantly better or worse than the untrained "
                       "model on safety, over-refusal, correct action, refusal style, format or policy citation: "
                       "this run does not reproduce the paper's effects (on "
                       f"{int(metrics['n'].max()) if len(metrics) else 0} prompts; see the training section for "
                       "the model and its steps).")
        else:
            out.append("Significant against the untrained model: " + "; ".join(
                f"{labels.get(r.variant, r.variant)} {r.key} {fmt_diff(r.diff, r.lo, r.hi)}"
                for r in sig.itertuples()) + ".")
    return out


CAVEATS = [
    "Grading is rule-based: the refusal classifier (XSTest's three labels; its accuracy against XSTest's "
    "human-labelled completions is printed by bench/bench_agreement.py and bounded in tests/test_rules.py) and "
    "rule-decided propositions for the response type and style. not_unsafe "
    "counts an answer as safe when it does not comply; it does not read whether complied content is harmful.",
    "The rules miss some refusals: on XSTest's labelled completions they read not_unsafe and not_overrefuse a little "
    "lower than the human labels do (tests/test_evaluate.py compares the two).",
    "StrongREJECT's convincing and specific scores, when present, are graded by the judge model (an LLM); with the "
    "default recipe's small embedded judge, read them as a pipeline check, not a measurement of harm.",
    "Latency is wall time per answer on the machine that ran the evaluation: noisy, and not comparable across "
    "machines.",
]


# ------------------------------------------------------------------------------------------------ metrics.json

def _clean(x: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def metrics_document(run_dir: Path, ev: dict, funnel: pd.DataFrame, scored: pd.DataFrame,
                     judge_summary: dict, training: dict, times: pd.DataFrame, found: Sequence[str],
                     comparison: Optional[pd.DataFrame] = None) -> dict:
    """Every number of the run in one JSON-ready dict."""
    metrics = ev["metrics"]
    per_variant = {v: {r.key: {"value": r.value, "lo": r.lo, "hi": r.hi, "n": r.n} for r in g.itertuples()}
                   for v, g in metrics.groupby("variant", sort=False)}
    manifest = Path(run_dir) / "manifest.json"
    usage = json.loads(manifest.read_text()).get("usage", {}) if manifest.is_file() else {}
    doc = {
        "run": Path(run_dir).name,
        "evaluation": ev["info"],
        "variants": ev["variants"].to_dict("records"),
        "metrics": per_variant,
        "differences": ev["differences"].to_dict("records"),
        "definitions": ev["definitions"].to_dict("records"),
        "funnel": funnel.to_dict("records"),
        "judge": judge_summary,
        "training": training,
        "stage_times_s": dict(zip(times["stage"], times["duration_s"])),
        "usage": usage,
        "findings": list(found),
        "caveats": CAVEATS,
    }
    if comparison is not None and not comparison.empty:
        doc["comparison"] = comparison.to_dict("records")
    return _clean(doc)


def judge_summary(scored: pd.DataFrame, threshold: Optional[float], resamples: int, seed: int,
                  confidence: float = 0.95) -> dict:
    """Mean judge and final scores of stage 03 with bootstrap intervals, and the share above the threshold."""
    from .metrics import bootstrap_weights

    out: dict[str, Any] = {"samples": int(len(scored))}
    for col in ("judge_overall", "final_score"):
        if col in scored and scored[col].notna().any():
            x = scored[col].dropna().to_numpy(float)
            boots = bootstrap_weights(len(x), resamples, seed) @ x / len(x)
            lo, hi = (float(v) for v in pd.Series(boots).quantile([(1 - confidence) / 2, (1 + confidence) / 2]))
            out[col] = {"mean": float(x.mean()), "lo": lo, "hi": hi, "n": int(len(x))}
    if threshold is not None and "final_score" in scored:
        out["above_threshold"] = float((scored["final_score"] >= threshold).mean()) if len(scored) else None
        out["threshold"] = threshold
    return out


def write_json(path: Path, doc: dict) -> Path:
    """metrics.json: NaN written as null (JSON has no NaN), atomically."""
    return write_json_atomic(path, _clean(doc))


# ------------------------------------------------------------------------------------------------ comparing runs

def compare_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """The metrics of several runs, long: run, variant, key, value, lo, hi, n. A run without stage 06 is
    listed with no metric (its `missing` says why)."""
    frames = []
    for rd in run_dirs:
        rd = Path(rd)
        path = rd / EVAL / "metrics.csv"
        if path.is_file():
            frames.append(pd.read_csv(path).assign(run=rd.name, missing=""))
        else:
            frames.append(pd.DataFrame([{"run": rd.name, "missing": f"no {EVAL}/metrics.csv in {rd}"}]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def comparison_table(table: pd.DataFrame, keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Runs side by side: one row per (run, variant), the headline metrics as columns."""
    t = table.dropna(subset=["key"]) if "key" in table else pd.DataFrame()
    if t.empty:
        return pd.DataFrame()
    t = t.assign(variant=t["run"] + " / " + t["variant"])
    return wide_table(t, [k for k in keys if k in set(t["key"])])


def resolve_runs(names: Sequence[str], outputs_dir: Path) -> list[Path]:
    """Run names under outputs_dir, or paths to run folders."""
    out = []
    for name in names:
        p = Path(name)
        out.append(p if (p.is_absolute() or len(p.parts) > 1) else Path(outputs_dir) / name)
    return out


# ------------------------------------------------------------------------------------------------ report.html

@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG file)
    bullets: list[str] = field(default_factory=list)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f3f3f3}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
img{max-width:100%}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A self-contained page: tables and figures (embedded PNGs), no code."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.heading)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
        for caption, table in s.tables:
            if table is None or table.empty:
                continue
            parts.append(f"<p><b>{html.escape(caption)}</b></p>" + table.to_html(escape=True, na_rep=""))
        for caption, png in s.figures:
            if png and Path(png).is_file():
                parts.append(f"<figure>{_img(png)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, title: str, sections: Sequence[Section]) -> Path:
    path.write_text(render_html(title, sections), encoding="utf-8")
    return path


def report_sections(run: str, ev: dict, figures: dict[str, Path], found: Sequence[str], times: pd.DataFrame,
                    funnel: pd.DataFrame, judge: dict, training: dict, comparison: Optional[pd.DataFrame] = None
                    ) -> list[Section]:
    """The report's sections, in the order a reader asks: what was measured, what it showed, how the data and
    the models were made, what it cost, and what to keep in mind."""
    m, d, variants, info = ev["metrics"], ev["differences"], ev["variants"], ev["info"]
    pct = percent(info.get("confidence", 0.95))
    paper = pd.DataFrame([{"metric": k, "paper (for scale, not comparable)": v} for k, v in PAPER.items()
                          if k in set(m["key"])])
    shown = variants[["variant", "label", "model", "system_prompt", "available", "reason"]] if not variants.empty \
        else variants
    cost = wide_table(m, [k for k in COST if k in set(m["key"])]) if not m.empty else pd.DataFrame()
    judge_rows = pd.DataFrame([{"score": k, **v} for k, v in judge.items() if isinstance(v, dict)])
    train = pd.DataFrame([{"stage": s, **{k: v for k, v in t.items() if not isinstance(v, (dict, list))}}
                          for s, t in training.items()])
    sections = [
        Section("What this run measured", [
            f"Run {run}: {info.get('prompts', '?')} held-out prompts answered by each variant; answers graded by "
            "rules (refusal class, response type, style, cited sections, format). Every number carries its "
            f"{pct} bootstrap interval over prompts ({info.get('resamples', '?')} resamples, seed {info.get('seed', '?')})."],
            tables=[("Variants", shown), ("What each metric counts", ev["definitions"])]),
        Section("Findings", bullets=list(found)),
        Section("Headline metrics", tables=[(f"value [{pct} interval]", headline_table(m, n=True)),
                                            ("The paper's figures, for scale", paper)],
                figures=[("Metrics per variant", figures.get("metrics")),
                         ("not_unsafe against not_overrefuse (up and right is better)", figures.get("pareto")),
                         ("StrongREJECT goodness@0.1 against XSTest not_overrefuse", figures.get("pareto_paper"))]),
        Section("Differences between variants", [
            "Paired bootstrap: each variant minus the baseline on the same resampled prompts; * marks an interval "
            "that excludes 0. Anything without * is not shown by this evaluation."],
            tables=[(f"difference [{pct} interval]", differences_table(d))],
            figures=[("Paired differences", figures.get("differences"))]),
        Section("Policy retrieval and style", tables=[
            ("Chain of thought cites a section of the prompt's category, by expected action",
             wide_table(m, [k for k in RETRIEVAL if k in set(m["key"])]) if not m.empty else pd.DataFrame())],
            figures=[("Which category's sections the chains of thought cite", figures.get("citations")),
                     ("XSTest refusal labels", figures.get("xstest_labels"))]),
        Section("How the training data and models were made", tables=[
            ("Stage 03 funnel: from generated samples to the SFT set", funnel),
            (f"Stage 03 judge scores (mean [{pct} interval])", judge_rows), ("Training (stages 04-05)", train)],
            figures=[("Funnel", figures.get("funnel")), ("Judge scores", figures.get("judge_scores")),
                     ("Training curves", figures.get("training"))]),
        Section("Cost", tables=[("Per answer: CoT tokens, tokens generated, seconds", cost),
                                ("Stage times (s), from the manifest", times)]),
    ]
    if comparison is not None and not comparison.empty:
        sections.append(Section("Runs compared", tables=[(f"value [{pct} interval]", comparison)],
                                figures=[("Runs compared", figures.get("comparison"))]))
    sections.append(Section("Caveats", bullets=CAVEATS))
    return sections
