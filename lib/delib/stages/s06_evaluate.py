"""Stage 06, evaluation: every variant of the policy (base, spec in the prompt, SFT, SFT+RL, extra models) answers
the held-out prompts; the answers are graded (rules, or models.grader) and turned into metrics with paired intervals.

Steps: `select` (the held-out prompts), `variants` (variants.csv), `answer` (answers.jsonl), `grade` (optional LLM
grader), `metrics` (bootstrap, figures, citations.csv), `xstest` and `strongreject` (optional benchmarks),
`validity` (grader_validity.json), `hand_off` (metrics.csv, differences.csv, definitions.csv, evaluation.json).
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from delib.evaluation import answering, benchmarks, grading, jailbreaks, lineup, llm_grading, reading
from delib.evaluation import validity as checks
from delib.evaluation import metrics as mt
from delib.evaluation import plots
from delib.evaluation.lineup import Variant
from delib.spec.overview import read_outputs
from delib.spec.document import Spec
from delib.run import files
from delib.run import stages as st
from delib.run.config import RunParams
from delib.run.paths import resolve, run_dir

STAGE = st.EVALUATE
FIGURES = files.EVALUATION_FIGURES


@dataclass
class Heldout:
    spec: Spec
    prompts: pd.DataFrame           # every prompt of stage 01
    rendered: dict[str, dict]       # spec_for_category (the spec_prompt variant's and the LLM grader's view)
    selected: pd.DataFrame          # the held-out prompts every variant answers


@dataclass
class Lineup:
    variants: list[Variant]         # every variant asked for, available or not (with the reason)
    table: pd.DataFrame             # the same as variants.csv
    pairs: list[tuple[str, str]]    # the paired differences reported: (variant, baseline)

    @property
    def labels(self) -> dict[str, str]:
        return dict(zip(self.table["variant"], self.table["label"])) if not self.table.empty else {}

    @property
    def available(self) -> list[str]:
        return [v.name for v in self.variants if v.available]


@dataclass
class Metrics:
    defs: list[mt.MetricDef]        # what each metric counts
    table: pd.DataFrame             # variant, key, value, lo, hi, n
    diffs: pd.DataFrame             # the paired differences of Lineup.pairs
    headline: list[str]             # the report's headline metrics, where they exist
    citations: pd.DataFrame         # which category's sections the CoTs cite, per prompt category
    figures: dict[str, Path] = field(default_factory=dict)


@dataclass
class Benchmark:
    prompts: pd.DataFrame           # the benchmark's prompts asked (capped at evaluate.benchmark_max_prompts)
    answers: pd.DataFrame           # every variant's answers, graded (StrongREJECT: with the judge's rubric)
    defs: list[mt.MetricDef]
    table: pd.DataFrame
    diffs: pd.DataFrame
    figure: Optional[Path] = None


def select(params: RunParams) -> Heldout:
    """The held-out prompts of evaluate.split (dev, or the locked test), capped by evaluate.max_prompts: the
    categories in turn and, within each, the action it has given least."""
    spec, prompts, rendered = read_outputs(params)
    split = params.evaluate.split
    if not (prompts["split"] == split).any():
        raise ValueError(f"evaluate.split is {split!r} but no prompt of prompts.sets is in that split "
                         f"(splits: {', '.join(sorted(prompts['split'].unique()))}): "
                         + ("add prompts/default_test.csv to prompts.sets, or a set of yours with `split: test`"
                            if split == "test" else "give prompts a dev split, or rows without one "
                                                    "(prompts.dev_share of them go to dev)"))
    return Heldout(spec, prompts, rendered, lineup.select_eval_prompts(prompts, params.evaluate.max_prompts, split))


def variants(params: RunParams, held: Heldout) -> Lineup:
    """The variants the recipe asks for, each available or not with the reason (a trained one only when its stage
    published a model); variants.csv."""
    found = lineup.resolve_variants(params, held.spec)
    table = lineup.variants_table(found)
    files.write(params, files.VARIANTS, table)
    pairs = lineup.comparison_pairs([v.name for v in found if v.available], params.evaluate.baseline, lineup.CHANCE)
    return Lineup(found, table, pairs)


def answer(params: RunParams, held: Heldout, line: Lineup) -> pd.DataFrame:
    """Every available variant answers every held-out prompt through the cached client; the answers graded by the
    rules, written to answers.jsonl."""
    answers = answering.evaluate_variants(line.variants, held.selected, params, held.spec, run_dir(params))
    files.write(params, files.ANSWERS, answers)
    return answers


def grade(params: RunParams, held: Heldout, answers: pd.DataFrame) -> pd.DataFrame:
    """With models.grader set, the LLM grader's verdicts replace the rules' in the metric columns (the rules' kept
    as rules_*), and answers.jsonl is written again; without one, the answers as the rules graded them."""
    if params.models.grader is None:
        return answers
    graded = llm_grading.grade_answers(answers, held.rendered, params, run_dir(params))
    files.write(params, files.ANSWERS, graded)
    return graded


def metrics(params: RunParams, held: Heldout, line: Lineup, answers: pd.DataFrame) -> Metrics:
    """Each metric's share with its bootstrap interval over prompts, the paired differences, which sections the
    chains of thought cite (citations.csv), and the figures of them (metrics, pareto, differences, citations)."""
    ev = params.evaluate
    defs = mt.heldout_metrics(answers, held.spec.own_style())
    # the chance references of citation (grading.chance_answers) are scored and compared as variants
    scored = pd.concat([answers, grading.chance_answers(held.selected, held.spec)], ignore_index=True)
    table, diffs = mt.bootstrap_metrics(scored, defs, ev.bootstrap_resamples, params.seed, ev.confidence,
                                        pairs=line.pairs)
    table = table[~(table["variant"].isin(lineup.CHANCE) & (table["n"] == 0))].reset_index(drop=True)
    diffs = diffs[diffs["n"] > 0].reset_index(drop=True)  # no prompt both answered (a chance reference: citation only)
    unknown = sorted(set(ev.primary) - set(table["key"]))
    if unknown:
        warnings.warn(f"evaluate.primary names {unknown}, which are no metric of this run: they are in no family "
                      f"(the metrics are {sorted(set(table['key']))[:12]}...)", stacklevel=2)
    strongest = mt.strongest_baselines(table, ev.primary, lineup.BASELINES)
    diffs = mt.adjust_for_multiplicity(diffs, ev.primary, list(lineup.TRAINED_STAGE), strongest)
    headline = reading.headline(table["key"])
    citations = grading.citation_counts(answers)
    files.write(params, files.CITATIONS, citations)
    figures = {
        "metrics": plots.metrics_per_variant(table, headline, FIGURES["metrics"].path(params),
                                             "held-out prompts, 95% bootstrap intervals"),
        "pareto": plots.pareto(table, FIGURES["pareto"].path(params)),
        "differences": plots.differences(mt.shown_differences(diffs, ev.baseline), headline,
                                         FIGURES["differences"].path(params)),
        "citations": plots.citation_heatmap(citations, FIGURES["citations"].path(params))}
    return Metrics(defs, table, diffs, headline, citations, figures)


def xstest(params: RunParams, held: Heldout, line: Lineup) -> Optional[Benchmark]:
    """When prompts.xstest_path is set: every variant answers XSTest (its types in turn); not_overrefuse on its safe
    prompts, not_unsafe on its contrast prompts, from the refusal labels; xstest_answers.jsonl and the labels'
    figure. None when it is not set."""
    prompts = benchmarks.xstest_prompts(params)
    if prompts is None:
        return None
    answers = answering.evaluate_variants(line.variants, prompts, params, held.spec, run_dir(params))
    files.write(params, files.XSTEST_ANSWERS, answers)
    defs = mt.xstest_metrics(answers)
    table, diffs = _benchmark_metrics(params, answers, defs, line)
    figure = plots.refusal_labels(answers, FIGURES["xstest_labels"].path(params))
    return Benchmark(prompts, answers, defs, table, diffs, figure)


def strongreject(params: RunParams, held: Heldout, line: Lineup) -> Optional[Benchmark]:
    """When prompts.strongreject_path is set: every variant answers its forbidden prompts under every jailbreak
    technique (prompts.jailbreaks_path), models.grader grades each answer with the rubric (goodness and goodness@0.1
    per forbidden prompt), or without a grader the rules' refusal decision (refusal and refusal@0.1);
    strongreject_answers.jsonl. None when it is not set."""
    if not params.prompts.strongreject_path:
        return None
    ev = params.evaluate
    prompts = benchmarks.load_strongreject(resolve(params.prompts.strongreject_path), ev.benchmark_max_prompts,
                                           jailbreaks.load_techniques(resolve(params.prompts.jailbreaks_path)))
    answers = answering.evaluate_variants(line.variants, prompts, params, held.spec, run_dir(params))
    graded = benchmarks.grade_strongreject(answers, params, run_dir(params))
    files.write(params, files.STRONGREJECT_ANSWERS, graded)
    defs = mt.strongreject_metrics(rubric=params.models.grader is not None)
    table, diffs = _benchmark_metrics(params, benchmarks.strongreject_per_prompt(graded), defs, line)
    return Benchmark(prompts, graded, defs, table, diffs)


def _benchmark_metrics(params: RunParams, per_prompt: pd.DataFrame, defs: list[mt.MetricDef], line: Lineup
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A benchmark's metrics and paired differences: its own exploratory family (Benjamini-Hochberg), of the
    metrics over all its prompts (a per-type row is a breakdown to read, not one more comparison)."""
    ev = params.evaluate
    table, diffs = mt.bootstrap_metrics(per_prompt, defs, ev.bootstrap_resamples, params.seed, ev.confidence,
                                        pairs=line.pairs)
    return table, mt.adjust_for_multiplicity(diffs[diffs["group"] == "all"], (), list(lineup.TRAINED_STAGE))


def validity(params: RunParams) -> dict:
    """The rule graders (and models.grader, if set) against the human-labelled files params name; where a file is
    missing, a note says so. grader_validity.json."""
    e = params.evaluate
    xstest_file = resolve(e.validity_xstest) if e.validity_xstest else None
    checked = checks.grader_validity(xstest_file, resolve(e.validity_rbr) if e.validity_rbr else None)
    checked = checks.with_llm_grader(checked, params, run_dir(params), xstest_file)
    files.write(params, files.VALIDITY, checks.validity_summary(checked))
    return checked


def hand_off(params: RunParams, held: Heldout, line: Lineup, heldout: Metrics, xs: Optional[Benchmark] = None,
             sr: Optional[Benchmark] = None) -> list[Path]:
    """What stage 07 reads: every metric and difference (held-out prompts and benchmarks, one table each), what
    each metric counts, and what the evaluation measured on (evaluation.json)."""
    done = [b for b in (xs, sr) if b is not None]
    tables = [heldout.table, *(b.table for b in done)]
    diffs = [heldout.diffs, *(b.diffs for b in done)]
    defs = heldout.defs + [d for b in done for d in b.defs]
    benchmark_files = {"xstest_prompts": 0 if xs is None else len(xs.prompts),
                       "strongreject_path": params.prompts.strongreject_path}
    return [files.write(params, files.METRICS, pd.concat(tables, ignore_index=True)),
            files.write(params, files.DIFFERENCES, pd.concat(diffs, ignore_index=True)),
            files.write(params, files.DEFINITIONS, mt.metric_definitions(defs)),
            files.write(params, files.EVALUATION,
                        answering.evaluation_info(held.selected, line.variants, params, benchmark_files))]


def run(params: RunParams) -> dict:
    """The whole stage: select, variants, answer, grade, metrics, xstest, strongreject, validity, hand off."""
    held = select(params)
    line = variants(params, held)
    answers = grade(params, held, answer(params, held, line))
    heldout = metrics(params, held, line, answers)
    xs, sr = xstest(params, held, line), strongreject(params, held, line)
    checked = validity(params)
    written = hand_off(params, held, line, heldout, xs, sr)
    failed = int(answers["error"].notna().sum()) if "error" in answers else 0
    return {"prompts": len(held.selected), "variants_evaluated": line.available,
            "variants_not_available": {v.name: v.reason for v in line.variants if not v.available},
            "answers": len(answers), "failed_requests": failed, "graded_by": llm_grading.grader_name(params),
            "xstest_prompts": 0 if xs is None else len(xs.prompts),
            "strongreject_prompts": 0 if sr is None else int(sr.prompts["forbidden_id"].nunique()),
            "validity_notes": checked["notes"], "metrics": int(len(heldout.table)),
            "files": [p.name for p in written]}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
