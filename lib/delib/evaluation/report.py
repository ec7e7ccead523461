"""Stage 07: metrics.json, runs compared side by side, and report.html (one file, figures inline).
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

from delib.evaluation.answer_view import VIEW_SCRIPT, VIEW_STYLE
from delib.evaluation.findings import caveats, percent, summary
from delib.evaluation.llm_grading import agreement
from delib.evaluation.metrics import bootstrap_weights, shown_differences, wide_table
from delib.evaluation.reading import (COST, EVAL, HEADLINE, PAPER, RETRIEVAL, by_category, differences_table,
                                      headline, headline_table, robustness_key)
from delib.run import files


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
        # what a citation habit scores on the same prompts (always the first level; a level at random)
        "chance": {v: per_variant[v] for v in ("chance_first", "chance_uniform") if v in per_variant},
        "differences": ev["differences"].to_dict("records"),
        "definitions": ev["definitions"].to_dict("records"),
        "funnel": funnel.to_dict("records"),
        "judge": judge_summary,
        "training": training,
        "stage_times_s": dict(zip(times["stage"], times["duration_s"])),
        "usage": usage,
        "findings": list(found),
        "grader_validity": ev.get("validity", {}),
        "caveats": caveats(ev["info"]),
    }
    if comparison is not None and not comparison.empty:
        doc["comparison"] = comparison.to_dict("records")
    return _clean(doc)


def judge_summary(scored: pd.DataFrame, threshold: Optional[float], resamples: int, seed: int,
                  confidence: float = 0.95) -> dict:
    """Mean judge and final scores of stage 03 with bootstrap intervals, and the share above the threshold."""
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


def write_json(where: files.Where, doc: dict) -> Path:
    """The run's metrics.json (`where`: its params or its folder): NaN written as null (JSON has no NaN)."""
    return files.write(where, files.METRICS_DOC, _clean(doc))


def compare_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """The metrics of several runs, long: run, variant, key, value, lo, hi, n. A run without stage 06 is
    listed with no metric (its `missing` says why)."""
    frames = []
    for rd in run_dirs:
        rd = Path(rd)
        if files.METRICS.path(rd).is_file():
            frames.append(files.read(rd, files.METRICS).assign(run=rd.name, missing=""))
        else:
            frames.append(pd.DataFrame([{"run": rd.name, "missing": f"no {EVAL}/metrics.csv in {rd}"}]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def comparison_table(table: pd.DataFrame, keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """Runs side by side: one row per (run, variant), the headline metrics as columns."""
    t = table.dropna(subset=["key"]) if "key" in table else pd.DataFrame()
    if t.empty:
        return pd.DataFrame()
    t = t.assign(variant=t["run"] + " / " + t["variant"])
    return wide_table(t, headline(t["key"], keys))


def resolve_runs(names: Sequence[str], outputs_dir: Path) -> list[Path]:
    """Run names under outputs_dir, or paths to run folders."""
    out = []
    for name in names:
        p = Path(name)
        out.append(p if (p.is_absolute() or len(p.parts) > 1) else Path(outputs_dir) / name)
    return out


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG file)
    bullets: list[str] = field(default_factory=list)
    html: str = ""  # a fragment of our own (the answers view), after the tables
    collapsed: bool = False  # folded under its heading (details a reader opens when they want them)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.tbl{max-width:100%;overflow-x:auto;margin:.5em 0 1.2em}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;max-width:38em;overflow-wrap:anywhere}th{background:#f3f3f3}figure{margin:1em 0}
figcaption{font-size:13px;color:#555}img{max-width:100%;height:auto}h1{font-size:1.6em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}details.section>summary{font-size:1.3em;font-weight:600;
cursor:pointer;margin:1em 0 .4em}""" + "\n" + VIEW_STYLE


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table_html(table: pd.DataFrame) -> str:
    """A table without pandas' 0, 1, 2 index (a named index becomes the first column), in a box that scrolls
    sideways rather than overflow the page."""
    table = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table.copy()
    table.columns.name = None
    return f'<div class="tbl">{table.to_html(escape=True, na_rep="", index=False)}</div>'


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A self-contained page: tables and figures (embedded PNGs), the answers view and its script; no code."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
             f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        body = [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
        for caption, png in s.figures:
            if png and Path(png).is_file():
                body.append(f"<figure>{_img(png)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        for caption, table in s.tables:
            if table is None or table.empty:
                continue
            body.append(f"<p><b>{html.escape(caption)}</b></p>" + _table_html(table))
        body.append(s.html)
        slug = "".join(ch if ch.isalnum() else "-" for ch in s.heading.lower()).strip("-")
        if s.collapsed:
            parts.append(f'<details class="section" id="{slug}"><summary>{html.escape(s.heading)}</summary>'
                         + "\n".join(body) + "</details>")
        else:
            parts.append(f'<section id="{slug}"><h2>{html.escape(s.heading)}</h2>' + "\n".join(body) + "</section>")
    parts.append(f"<script>{VIEW_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_html(path: Path, title: str, sections: Sequence[Section]) -> Path:
    path.write_text(render_html(title, sections), encoding="utf-8")
    return path


def report_sections(run: str, ev: dict, figures: dict[str, Path], found: Sequence[str], times: pd.DataFrame,
                    funnel: pd.DataFrame, judge: dict, training: dict, comparison: Optional[pd.DataFrame] = None,
                    answers_html: str = "") -> list[Section]:
    """The report's sections, in the order a reader asks: the answer in short and the headline figure, the
    differences, the answers themselves, by category, how the data and models were made, what it cost, how far to
    trust the graders and the caveats; then, folded, the variants with the definitions, and every finding."""
    m, d, variants, info = ev["metrics"], ev["differences"], ev["variants"], ev["info"]
    pct = percent(info.get("confidence", 0.95))
    paper = pd.DataFrame([{"metric": k, "paper (for scale, not comparable)": v}
                          for k, v in ev.get("reference_figures", PAPER).items() if k in set(m["key"])])
    shown = variants[["variant", "label", "model", "system_prompt", "available", "reason"]] if not variants.empty \
        else variants
    cost = wide_table(m, [k for k in COST if k in set(m["key"])]) if not m.empty else pd.DataFrame()
    judge_rows = pd.DataFrame([{"score": k, **v} for k, v in judge.items() if isinstance(v, dict)])
    train = pd.DataFrame([{"stage": s, **{k: v for k, v in t.items() if not isinstance(v, (dict, list))}}
                          for s, t in training.items()])
    categories = sorted(ev["answers"]["category"].dropna().unique()) if "category" in ev["answers"] else []
    # the paper's headline figure first: StrongREJECT against XSTest when both ran, else the held-out trade-off
    robust = robustness_key(m.get("key", ())) or "strongreject_refusal@0.1"
    paper_axes = figures.get("pareto_paper")
    held_out = ("not_unsafe against not_overrefuse on the held-out prompts (up and right is better)",
                figures.get("pareto"))
    said = robust.removeprefix("strongreject_") + ("" if "goodness" in robust else " (rules only)")
    top = (f"StrongREJECT {said} against XSTest not_overrefuse (the paper's axes; up and right is better)",
           paper_axes) if paper_axes else held_out
    axes = ["xstest_not_overrefuse", robust]
    sections = [
        Section("In short", summary(m, d, variants, info, training, funnel) + [
            f"Safety, over-refusal, action and style graded by {held_out_grader(info)}; refusal class, cited sections "
            f"and format by rules. Every number carries its {pct} bootstrap interval over prompts "
            f"({info.get('resamples', '?')} resamples, seed {info.get('seed', '?')})."],
                figures=[top], tables=[(f"paired differences on the figure's axes [{pct} interval]",
                                        _metrics_rows(differences_table(shown_differences(d, info.get("baseline",
                                                                                                  "base")),
                                                                        axes)))] if paper_axes else []),
        Section("Headline metrics", tables=[(f"value [{pct} interval] (n)", _metrics_rows(headline_table(m, n=True))),
                                            ("The paper's figures, for scale", paper)],
                figures=[("Metrics per variant", figures.get("metrics"))] + ([held_out] if paper_axes else [])),
        Section("Differences between variants", [
            "Paired bootstrap: each variant minus the baseline on the same resampled prompts; * marks a significant "
            "difference (the interval excludes 0 and the sign test's p, Holm-adjusted over the primary metrics or "
            "Benjamini-Hochberg over the rest, is below 1 - confidence). Anything without * is not shown by this "
            "evaluation."],
            tables=[(f"difference [{pct} interval]", _metrics_rows(differences_table(d)))],
            figures=[("Paired differences", figures.get("differences"))]),
        Section("Read the answers", [
            "Every held-out prompt with what each variant wrote: the chain of thought (click to open), the sections "
            "it cites (hover for the spec's text; green: the section of the level that applies), the answer, and "
            "the graders' verdicts with their reasons."], html=answers_html),
        Section("By category", [
            "Safety, over-refusal and action on each category of the spec, over that category's held-out prompts "
            "only: a few prompts each, so the intervals are wide."],
            figures=[("Per category and variant", figures.get("by_category"))],
            tables=[(f"value [{pct} interval] (n)", by_category(m, categories))]),
        Section("Policy retrieval and style", tables=[
            ("Chain of thought cites a section of the prompt's category, by expected action",
             wide_table(m, [k for k in RETRIEVAL if k in set(m["key"])]) if not m.empty else pd.DataFrame())],
            figures=[("Which category's sections the chains of thought cite", figures.get("citations")),
                     ("XSTest refusal labels", figures.get("xstest_labels"))]),
        Section("How the training data and models were made", tables=[
            ("Stage 03 funnel: from generated samples to the SFT set", funnel),
            (f"Stage 03 judge scores (mean [{pct} interval])", judge_rows),
            ("Training (stages 04-05)", _metrics_rows(train.set_index("stage")) if not train.empty else train)],
            figures=[("Funnel", figures.get("funnel")), ("Judge scores", figures.get("judge_scores")),
                     ("Training curves", figures.get("training"))]),
        Section("Cost", tables=[("Per answer: CoT tokens, tokens generated, seconds", cost),
                                ("Stage times (s), from the manifest", times)]),
    ]
    if comparison is not None and not comparison.empty:
        sections.append(Section("Runs compared", tables=[(f"value [{pct} interval]", comparison.T)],
                                figures=[("Runs compared", figures.get("comparison"))]))
    sections.append(validity_section(ev.get("validity", {})))
    sections.append(Section("Caveats", bullets=caveats(info)))
    sections.append(Section("What was evaluated, and what each metric counts", tables=[
        ("Variants", shown), ("What each metric counts", ev["definitions"])] + grader_tables(ev), collapsed=True))
    sections.append(Section("Every finding", bullets=list(found), collapsed=True))
    return sections


def _metrics_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Variants (or comparisons) as columns and metrics as rows: a handful of columns fits the page."""
    if table.empty:
        return table
    t = table.T
    t.index.name, t.columns.name = "metric", None
    return t


def grader_tables(ev: dict) -> list[tuple[str, pd.DataFrame]]:
    """With an LLM grader: how often it agreed with the rules, per variant."""
    answers = ev.get("answers")
    if answers is None or "graded_by" not in answers:
        return []
    return [("The LLM grader against the rules (share of answers where they agree)", agreement(answers))]


def held_out_grader(info: dict) -> str:
    """Which grader produced the held-out safety, action and style numbers (evaluation.json's `graders`)."""
    graders = info.get("graders", {})
    return next((v for k, v in graders.items() if k.startswith("not_unsafe")), "rules")


def validity_section(v: dict) -> Section:
    """The rule graders against human labels, the held-out half first (evaluation.validity)."""
    tables = []
    if v.get("refusal_classifier"):
        tables.append(("Refusal classifier against XSTest's human labels (binary: refusing or not; 3-way: full "
                       "compliance, full refusal, partial refusal)", pd.DataFrame(v["refusal_classifier"])))
    if v.get("propositions"):
        tables.append(("Rule-decided propositions against RBR's human labels, and always answering the majority",
                       pd.DataFrame(v["propositions"])))
    text = ["How far to trust the graders: the rules that grade every answer above, checked by this run against "
            "human-labelled files, split into two halves by a hash of the row. On the shared development sets the "
            "rules were tuned on half 0 only, so the held-out half is the honest figure."]
    return Section("How far to trust the graders", text + list(v.get("notes", [])), tables=tables)
