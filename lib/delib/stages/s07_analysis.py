"""Stage 07, analysis: what the run showed, read back from the files of stages 03-06, as figures, findings written
from the numbers, metrics.json (every number with its interval) and report.html, at the top of the run folder.

Steps: `load` (what the earlier stages wrote, and the runs compared), `figures` (each figure file), `findings`,
`report` (metrics.json, report.html).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from delib.evaluation import answer_view, plots, reading
from delib.evaluation import findings as written
from delib.evaluation import report as pages
from delib.evaluation.grading import citation_counts
from delib.evaluation.metrics import shown_differences
from delib.run import files
from delib.run import stages as st
from delib.run.config import RunParams
from delib.run.paths import resolve, run_dir

STAGE = st.ANALYSIS
FIGURES = files.ANALYSIS_FIGURES


@dataclass
class Loaded:
    ev: dict                        # what stage 06 wrote (reading.load_evaluation): answers, metrics, variants, ...
    funnel: pd.DataFrame            # stage 03's funnel (empty when it has not run)
    scored: pd.DataFrame            # stage 03's scored samples
    judge: dict                     # their judge and final scores, with intervals
    logs: dict[str, pd.DataFrame]   # stages 04-05's per-step logs, where they trained
    training: dict[str, dict]       # stages 04-05's training.json
    times: pd.DataFrame             # each stage's wall time, from the manifest
    compared: Optional[pd.DataFrame] = None    # the runs of analysis.compare_runs, long (None: none named)
    comparison: Optional[pd.DataFrame] = None  # the same, one row per run and variant

    @property
    def metrics(self) -> pd.DataFrame:
        return self.ev["metrics"]

    @property
    def diffs(self) -> pd.DataFrame:
        return self.ev["differences"]

    @property
    def variants(self) -> pd.DataFrame:
        return self.ev["variants"]

    @property
    def info(self) -> dict:
        return self.ev["info"]

    @property
    def labels(self) -> dict[str, str]:
        v = self.variants
        return dict(zip(v["variant"], v["label"])) if not v.empty else {}

    @property
    def headline(self) -> list[str]:
        """The headline metrics the run has."""
        return reading.headline(self.metrics["key"])

    @property
    def categories(self) -> list[str]:
        answers = self.ev["answers"]
        return sorted(answers["category"].dropna().unique()) if "category" in answers else []


def load(params: RunParams) -> Loaded:
    """Stage 06's metrics, differences, variants and answers; stage 03's funnel and judge scores; stages 04-05's
    training logs; the manifest's stage times; and the runs named in analysis.compare_runs, side by side."""
    rdir, ev_params = run_dir(params), params.evaluate
    ev = reading.load_evaluation(rdir)
    funnel, scored = reading.judge_outputs(rdir)
    judge = pages.judge_summary(scored, params.judge.threshold, ev_params.bootstrap_resamples, params.seed,
                                ev_params.confidence)
    loaded = Loaded(ev, funnel, scored, judge, reading.training_logs(rdir), reading.training_summaries(rdir),
                 reading.stage_times(rdir))
    if params.analysis.compare_runs:
        runs = pages.resolve_runs([params.run_name, *params.analysis.compare_runs], resolve(params.outputs_dir))
        loaded.compared = pages.compare_runs(runs)
        loaded.comparison = pages.comparison_table(loaded.compared)
    return loaded


def figures(params: RunParams, loaded: Loaded) -> dict[str, Path]:
    """Every figure of the report, each a PNG in the stage's folder: metrics, pareto (and the paper's axes when
    XSTest and StrongREJECT both ran), differences, citations, XSTest's labels, by category, stage 03's funnel and
    judge scores, the training curves, and the runs compared."""
    m, keys, labels = loaded.metrics, loaded.headline, loaded.labels
    path = lambda name: FIGURES[name].path(params)  # noqa: E731
    title = f"{written.percent(params.evaluate.confidence)} bootstrap intervals"
    out = {"metrics": plots.metrics_per_variant(m, keys, path("metrics"), title, labels),
           "pareto": plots.pareto(m, path("pareto"), labels=labels)}
    robust = reading.robustness_key(m["key"])
    if robust and "xstest_not_overrefuse" in set(m["key"]):
        out["pareto_paper"] = plots.pareto(m, path("pareto_paper"), x="xstest_not_overrefuse", y=robust,
                                           labels=labels)
    out["differences"] = plots.differences(shown_differences(loaded.diffs, params.evaluate.baseline), keys,
                                           path("differences"))
    out["citations"] = plots.citation_heatmap(citation_counts(loaded.ev["answers"]), path("citations"))
    if not loaded.ev["xstest_answers"].empty:
        out["xstest_labels"] = plots.refusal_labels(loaded.ev["xstest_answers"], path("xstest_labels"))
    out["by_category"] = plots.by_category(m, loaded.categories, path("by_category"), labels)
    if not loaded.funnel.empty:
        out["funnel"] = plots.funnel(loaded.funnel, path("funnel"))
    out["judge_scores"] = plots.judge_scores(loaded.scored, params.judge.threshold, path("judge_scores"),
                                             params.evaluate.bootstrap_resamples, params.seed)
    out["training"] = plots.training_curves(loaded.logs, path("training"))
    if loaded.compared is not None:
        out["comparison"] = plots.compare_runs(loaded.compared.dropna(subset=["key"]), keys, path("comparison"))
    return out


def findings(loaded: Loaded) -> list[str]:
    """Every finding, written from the numbers: a difference is called significant only when its paired interval
    excludes 0, and a variant that could not be evaluated is named with the reason, never given a number."""
    return written.findings(loaded.metrics, loaded.diffs, loaded.variants, loaded.info)


def report(params: RunParams, loaded: Loaded, figs: dict[str, Path], found: list[str]) -> list[Path]:
    """metrics.json (every number of the run) and report.html (tables, figures and findings; no code), at the top
    of the run folder."""
    rdir = run_dir(params)
    ev, comparison = loaded.ev, loaded.comparison
    doc = pages.metrics_document(rdir, ev, loaded.funnel, loaded.scored, loaded.judge, loaded.training, loaded.times,
                                 found, comparison.reset_index() if comparison is not None else None)
    answers_html = answer_view.render(ev["answers"], *answer_view.spec_sections(rdir), loaded.labels)
    sections = pages.report_sections(params.run_name, ev, figs, found, loaded.times, loaded.funnel, loaded.judge,
                                     loaded.training, comparison, answers_html)
    return [pages.write_json(params, doc),
            files.write(params, files.REPORT,
                        pages.render_html(report_title(params.run_name, ev["info"]), sections))]


def report_title(run_name: str, info: dict) -> str:
    """The report's title; it names the split when the held-out prompts were the locked test split."""
    on_test = " (on the locked test split)" if info.get("split") == "test" else ""
    return f"Deliberative alignment: run {run_name}{on_test}"


def run(params: RunParams) -> dict:
    """The whole stage: load, figures, findings, report."""
    loaded = load(params)
    figs = figures(params, loaded)
    found = findings(loaded)
    written_files = report(params, loaded, figs, found)
    return {"variants": list(loaded.labels), "metrics": int(len(loaded.metrics)), "figures": sorted(figs),
            "findings": len(found), "files": [p.name for p in written_files]}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
