"""Stage 03, judging and filtering: the spec's gates, then a spec-aware judge k times per sample (min of k) blended
with rule checks into a final score; the samples above the threshold, best of each prompt, become the SFT set.

Steps: `gate` (the samples and the spec's gates), `judge` (k judgements each; judgements.jsonl), `score` (scored.jsonl,
scores.png), `second_judge` (optional; judgements_second.jsonl), `filter` (funnel.csv, funnel.png), `datasets`
(sft.jsonl, sft_openai.jsonl, sft_hf/, rl.jsonl).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from delib.judging import filtering, plots
from delib.judging import judge as judging
from delib.models import ModelClient
from delib.spec.overview import read_outputs
from delib.spec.document import Spec
from delib.run import files, templates
from delib.run import stages as st
from delib.run.config import RunParams

STAGE = st.JUDGE


@dataclass
class Gated:
    spec: Spec
    prompts: pd.DataFrame           # every prompt of stage 01 (the RL set is its training prompts)
    rendered: dict[str, dict]       # spec_for_category, which the judge is shown
    samples: pd.DataFrame           # every generated sample, malformed ones included (the funnel starts here)
    gated: pd.DataFrame             # the well-formed samples that passed every gate: the ones judged
    steps: list                     # [(funnel label, samples left)], one per gate


@dataclass
class Filtered:
    kept: pd.DataFrame              # the samples kept for SFT
    funnel: pd.DataFrame            # step, samples, prompts, share of generated


@dataclass
class TrainingSets:
    sft: list[dict]                 # (prompt without the spec, CoT, answer) as chat messages, labels beside them
    rl: list[dict]                  # the training prompts with category and expected action


def gate(params: RunParams) -> Gated:
    """The well-formed samples of the first judge.max_prompts prompts, through the spec's gates (judge.gates, less
    those stage 06 grades with under judge.independent_selection) in order, each gate a step of the funnel."""
    spec, prompts, rendered = read_outputs(params)
    samples = files.read(params, files.SAMPLES)
    usable = samples[samples["malformed"].isna()]
    if params.judge.max_prompts:
        usable = usable[usable["prompt_id"].isin(usable["prompt_id"].drop_duplicates()[: params.judge.max_prompts])]
    gated, steps = filtering.apply_gates(usable, spec, filtering.selection(params.judge)[0])
    return Gated(spec, prompts, rendered, samples, gated, steps)


def judge(params: RunParams, gated: Gated) -> pd.DataFrame:
    """k judgements of every gated sample (each with its own seed, at judge.temperature); one row per judgement,
    parsed or failed, written to judgements.jsonl."""
    j = params.judge
    requests = judging.judge_requests(gated.gated, gated.rendered, j.k, j.show_expected_action, j.top_logprobs,
                                      j.temperature, templates.load_template("judge", params))
    with ModelClient.for_run(params, params.models.judge, "judge", STAGE) as client:
        results = client.chat_many(requests, desc="judge", batch=j.batch)
    judgements = judging.judgements_table(results)
    files.write(params, files.JUDGEMENTS, judgements)
    return judgements


def score(params: RunParams, gated: Gated, judgements: pd.DataFrame) -> pd.DataFrame:
    """Each gated sample with the judge's aggregate of its k judgements, the rule checks and the final score
    (scored.jsonl), and the score distributions with the threshold (scores.png)."""
    j = params.judge
    scored = judging.score_samples(gated.gated, judgements, j.aggregate, filtering.selection(j)[1],
                                   gated.spec.section_category(), gated.spec.checks_by_category())
    files.write(params, files.SCORED, scored)
    plots.score_distributions(scored, j.threshold, files.SCORES_FIGURE.path(params))
    return scored


def second_judge(params: RunParams, gated: Gated) -> Optional[pd.DataFrame]:
    """When models.second_judge is set, its one judgement of every gated sample (judgements_second.jsonl), to
    measure how far two judges agree; None otherwise."""
    if params.models.second_judge is None:
        return None
    requests = judging.judge_requests(gated.gated, gated.rendered, 1, params.judge.show_expected_action, None,
                                      template=templates.load_template("judge", params))
    with ModelClient.for_run(params, params.models.second_judge, "second_judge", STAGE) as client:
        second = judging.judgements_table(client.chat_many(requests, desc="second judge"))
    files.write(params, files.JUDGEMENTS_SECOND, second)
    return second


def filter(params: RunParams, gated: Gated, scored: pd.DataFrame) -> Filtered:  # noqa: A001 (the step's name)
    """The funnel: all k judgements parsed, final score >= judge.threshold, the best of each prompt's samples,
    at most judge.max_per_category per category (funnel.csv, funnel.png)."""
    j = params.judge
    kept, funnel = filtering.filter_samples(scored, gated.samples, j.threshold, j.best_of_n, j.max_per_category,
                                            gated.steps, j.k)
    files.write(params, files.FUNNEL, funnel)
    plots.funnel(funnel, files.FUNNEL_FIGURE.path(params))
    return Filtered(kept, funnel)


def datasets(params: RunParams, gated: Gated, filtered: Filtered) -> TrainingSets:
    """The SFT set (the prompt without the spec, CoT and answer) as JSONL, OpenAI chat fine-tuning JSONL and a
    Hugging Face `datasets` folder; the RL set, every training prompt."""
    sft = filtering.sft_rows(filtered.kept)
    rl = filtering.rl_rows(gated.prompts)
    files.write(params, files.SFT_SET, sft)
    files.write(params, files.SFT_OPENAI, filtering.openai_chat_rows(sft))
    filtering.export_hf_dataset(files.SFT_HF.path(params), sft)
    files.write(params, files.RL_SET, rl)
    return TrainingSets(sft, rl)


def run(params: RunParams) -> dict:
    """The whole stage: gate, judge, score, second judge, filter, datasets."""
    g = gate(params)
    judgements = judge(params, g)
    scored = score(params, g, judgements)
    second = second_judge(params, g)
    filtered = filter(params, g, scored)
    sets = datasets(params, g, filtered)
    return {"samples": len(g.samples), "gated": len(g.gated), "judgements": len(judgements),
            "failed_judgements": int(judgements["error"].notna().sum()) if len(judgements) else 0,
            "second_judgements": None if second is None else len(second),
            "kept": len(filtered.kept), "sft": len(sets.sft), "rl": len(sets.rl)}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
