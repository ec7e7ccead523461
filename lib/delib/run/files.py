"""The files of a run, each declared once: which stage writes it, its form, and which of its columns stay text.

Every stage writes and reads its run files through `read`/`write` here, so that a column's type is decided in one
place (an id or a level named "1" stays the text "1", never the number 1.0) and every write is atomic (a reader
never sees half a file, even when the writer is killed).

    from delib.run import files
    samples = files.read(params, files.SAMPLES)      # a DataFrame; FileNotFoundError naming the stage to run
    files.write(params, files.SAMPLES, samples)
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pandas as pd

from delib.run import stages as st
from delib.run.io import write_json_atomic, write_jsonl, write_text_atomic

if TYPE_CHECKING:
    from delib.run.config import RunParams

Where = Union["RunParams", Path, str]  # a run's params, or its folder


@dataclass(frozen=True)
class RunFile:
    stage: str                      # the stage that writes it, e.g. "02_generate"
    name: str                       # its name in the stage's folder
    text: tuple[str, ...] = ()      # columns read back as text whatever they look like (ids, level names)
    about: str = ""                 # one line for the layout docs and error messages
    top: bool = False               # at the top of the run folder (the report), not in the stage's folder

    @property
    def form(self) -> str:
        """'table' (JSONL or CSV read as a DataFrame), 'rows' (JSONL read as dicts), 'json' or 'other'."""
        return FORMS.get(self, "table" if self.name.endswith((".jsonl", ".csv")) else
                         "json" if self.name.endswith(".json") else "other")

    def path(self, where: Where) -> Path:
        folder = run_folder(where)
        return (folder if self.top else folder / self.stage) / self.name

    def require(self, where: Where) -> Path:
        """The file's path; FileNotFoundError that says which stage writes it when it is not there."""
        path = self.path(where)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run stage {self.stage} first "
                                    f"(delib run PARAMS --stages {self.stage.split('_')[0]})")
        return path


def run_folder(where: Where) -> Path:
    if isinstance(where, (str, Path)):
        return Path(where)
    from delib.run.paths import run_dir
    return run_dir(where)


# Every stage that calls a model or trains: the token and time totals of its last run (USAGE["02_generate"])
USAGE = {stage: RunFile(stage, st.USAGE_FILE, about="tokens, calls and seconds of the stage's model calls, per role")
         for stage in st.STAGES}
# Stage 01
SPEC = RunFile(st.POLICY, "spec.json", about="the parsed spec: sections, categories, levels")
SPEC_FOR_CATEGORY = RunFile(st.POLICY, "spec_for_category.json", about="what the generator sees per category")
PROMPTS = RunFile(st.POLICY, "prompts.jsonl", ("id", "level"), "every prompt with category, action, split")
# Stage 02
SAMPLES = RunFile(st.GENERATE, "samples.jsonl", ("prompt_id", "level"), "one row per generated sample")
# Stage 03
JUDGEMENTS = RunFile(st.JUDGE, "judgements.jsonl", ("prompt_id", "level"), "one row per judge call")
JUDGEMENTS_SECOND = RunFile(st.JUDGE, "judgements_second.jsonl", ("prompt_id", "level"), "the second judge's")
SCORED = RunFile(st.JUDGE, "scored.jsonl", ("prompt_id", "level"), "each gated sample's scores")
FUNNEL = RunFile(st.JUDGE, "funnel.csv", about="samples left after each step")
SFT_SET = RunFile(st.JUDGE, "sft.jsonl", about="the SFT set: the prompt without the spec, CoT and answer")
SFT_OPENAI = RunFile(st.JUDGE, "sft_openai.jsonl", about="the SFT set as OpenAI chat fine-tuning rows")
RL_SET = RunFile(st.JUDGE, "rl.jsonl", about="the RL prompts")
SFT_HF = RunFile(st.JUDGE, "sft_hf", about="the SFT set as a Hugging Face datasets folder (datasets.load_from_disk)")
SCORES_FIGURE = RunFile(st.JUDGE, "scores.png", about="the judge's and the final scores, with the threshold")
FUNNEL_FIGURE = RunFile(st.JUDGE, "funnel.png", about="samples left after each step, as bars")
# Stages 04-05: the files both training stages write, each in its own folder: one RunFile per stage, by the params
# section that trains it (SERVED["sft"] is 04_sft/served.json, SERVED["rl"] 05_rl/served.json)
def _per_training_stage(name: str, about: str) -> dict[str, RunFile]:
    return {which: RunFile(stage, name, about=about) for which, stage in st.TRAINING.items()}


TRAINING_LOG = _per_training_stage("log.jsonl", "the trainer's log: one row per optimizer step, with its seconds")
TRAINING_SUMMARY = _per_training_stage("training.json", "steps, speed, the first and last loss or reward")
TRAINING_PROGRESS = _per_training_stage("progress.json", "while training: the step reached, of how many")
SERVED = _per_training_stage("served.json", "how to query the trained model: its route, model role, checkpoint")
OPENAI_JOB = _per_training_stage("openai_job.json", "the OpenAI fine-tuning job: payload, problems, submitted or not")
STATUS = _per_training_stage("status.json", "what the stage made: its route, first and last loss or reward")
# Stage 04
LOSS_PLOT = RunFile(st.SFT, "loss.png", about="SFT's loss and token accuracy per step")
# Stage 05
CURVES_PLOT = RunFile(st.RL, "curves.png", about="GRPO's reward, KL and completion length per step")
REWARDS = RunFile(st.RL, "rewards.jsonl", ("prompt_id",), "every graded completion of GRPO")
RFT_SET = RunFile(st.RL, "rft_train.jsonl", about="the RL prompts as OpenAI reinforcement fine-tuning rows")
# Stage 06
VARIANTS = RunFile(st.EVALUATE, "variants.csv", ("variant", "label", "backend", "model", "system_prompt", "source",
                                                 "reason"), "the variants evaluated, and why any is not")
ANSWERS = RunFile(st.EVALUATE, "answers.jsonl", ("prompt_id", "level"), "every variant's held-out answers")
XSTEST_ANSWERS = RunFile(st.EVALUATE, "xstest_answers.jsonl", ("prompt_id",), "XSTest's answers")
STRONGREJECT_ANSWERS = RunFile(st.EVALUATE, "strongreject_answers.jsonl", ("prompt_id",), "StrongREJECT's")
CITATIONS = RunFile(st.EVALUATE, "citations.csv", about="which category's sections the CoTs cite")
METRICS = RunFile(st.EVALUATE, "metrics.csv", about="every metric of every variant with its interval")
DIFFERENCES = RunFile(st.EVALUATE, "differences.csv", about="paired differences between variants")
DEFINITIONS = RunFile(st.EVALUATE, "definitions.csv", about="what each metric counts")
EVALUATION = RunFile(st.EVALUATE, "evaluation.json", about="the prompts and variants of the evaluation")
VALIDITY = RunFile(st.EVALUATE, "grader_validity.json", about="the graders against human labels")
EVALUATION_FIGURES = {name: RunFile(st.EVALUATE, f"{name}.png", about=about) for name, about in (
    ("metrics", "the headline metrics per variant, with intervals"), ("pareto", "not_unsafe against not_overrefuse"),
    ("differences", "paired differences against the baseline"), ("citations", "which category's sections are cited"),
    ("xstest_labels", "XSTest's refusal labels per variant"))}  # EVALUATION_FIGURES["pareto"]: 06_evaluate/pareto.png
# Stage 07
METRICS_DOC = RunFile(st.ANALYSIS, "metrics.json", about="every number of the run, with its interval", top=True)
REPORT = RunFile(st.ANALYSIS, "report.html", about="the run's report: tables, figures, findings", top=True)
ANALYSIS_FIGURES = {name: RunFile(st.ANALYSIS, f"{name}.png", about=about) for name, about in (
    ("metrics", "the headline metrics per variant"), ("pareto", "not_unsafe against not_overrefuse"),
    ("pareto_paper", "StrongREJECT goodness@0.1 (refusal@0.1 without a grader) against XSTest not_overrefuse"),
    ("differences", "paired differences"), ("citations", "which category's sections are cited"),
    ("xstest_labels", "XSTest's refusal labels (when it ran)"), ("by_category", "the metrics per category"),
    ("funnel", "stage 03's funnel"), ("judge_scores", "stage 03's judge scores"),
    ("training", "stages 04-05's training curves"), ("comparison", "the runs of analysis.compare_runs"))}

FORMS = {SFT_SET: "rows", SFT_OPENAI: "rows", RL_SET: "rows", RFT_SET: "rows"}
ALL = tuple(f for v in dict(globals()).values() for f in (v.values() if isinstance(v, dict) else (v,))
            if isinstance(f, RunFile))  # the training stages' dicts too


def _text_dtypes(f: RunFile) -> dict:
    return {c: "object" for c in f.text}


def _as_text(df: pd.DataFrame, f: RunFile) -> pd.DataFrame:
    """The text columns as text: a value read as a number (a level "1") goes back to its string."""
    for c in f.text:
        if c in df:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) or v != v else
                              str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return df


def read(where: Where, f: RunFile, missing_ok: bool = False) -> Any:
    """The file as its form reads: a DataFrame (an empty file: an empty one), a list of row dicts, or JSON.
    With `missing_ok`, a file that is not there reads as empty (an empty DataFrame, [], {})."""
    path = f.path(where)
    if not path.exists():
        if missing_ok:
            return {"table": pd.DataFrame(), "rows": [], "json": {}, "other": ""}[f.form]
        f.require(where)
    if f.form == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    if f.form == "rows":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if f.form == "other":
        return path.read_text(encoding="utf-8")  # a page (report.html)
    if not path.stat().st_size:
        return pd.DataFrame()
    if path.suffix == ".csv":  # a CSV cannot tell an empty text from a missing one: a text column's empty is ""
        df = _as_text(pd.read_csv(path, dtype=_text_dtypes(f)), f)
        return df.fillna({c: "" for c in f.text if c in df})
    return _as_text(pd.read_json(path, lines=True, dtype=_text_dtypes(f)), f)


def write(where: Where, f: RunFile, data: Any) -> Path:
    """Write the file atomically in its form: a DataFrame (JSONL records, or CSV without the index), rows, or JSON."""
    path = f.path(where)
    if f.form == "json":
        return write_json_atomic(path, data)
    if f.form == "rows":
        return write_jsonl(path, data)
    if f.form == "other" and isinstance(data, str):
        return write_text_atomic(path, data)  # a page (report.html)
    if path.suffix == ".csv":
        return write_text_atomic(path, data.to_csv(index=False))
    buffer = io.StringIO()
    if len(data):
        data.to_json(buffer, orient="records", lines=True, force_ascii=False)
    text = buffer.getvalue()
    return write_text_atomic(path, text if not text or text.endswith("\n") else text + "\n")
