"""Stage 06: every variant answers the prompts through the same model client as any model; a trained model that
llama.cpp cannot take is served by `transformers serve` for the time of its calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd

from delib.evaluation.grading import answers_table
from delib.evaluation.lineup import STAGE, Variant
from delib.evaluation.llm_grading import grader_name
from delib.generation.cot import THINK_CLOSE, THINK_OPEN
from delib.generation.generate import finish_answers
from delib.generation.skeleton import skeleton_grammar
from delib.judging.filtering import shared_with_evaluation
from delib.models import ChatRequest, ModelClient
from delib.spec.document import Spec
from delib.run import files
from delib.run.config import EvaluateParams, ModelRole, RunParams
from delib.run.io import clip
from delib.run.paths import resolve, stage_dir
from delib.training.reward import shared_graders
from delib.training import weights
from delib.training.published import merged_folder

if TYPE_CHECKING:
    from delib.models import ChatResult


def answer_requests(variant: Variant, prompts: pd.DataFrame, max_tokens: Optional[int],
                    prestart_think: bool = False, cot_max_tokens: Optional[int] = None,
                    spec: Optional[Spec] = None) -> list["ChatRequest"]:
    """One request per prompt: the prompt alone (the trained model must recall the spec), after the spec for the
    spec_prompt variant (the prompt's category's view, or the whole spec). With `prestart_think`, or for a skeleton
    variant, the reply starts with <think> and stops at </think> (the first of two requests; the answer is asked
    next); a skeleton variant's CoT follows the skeleton grammar of the prompt's category in `spec` (as stage 02's
    generator writes it; a prompt without a category, a benchmark's, gets the pre-started <think> alone)."""
    prestart = prestart_think or variant.skeleton
    phase = ({"prefill": THINK_OPEN + "\n", "stop": [THINK_CLOSE], "max_tokens": cot_max_tokens or max_tokens}
             if prestart else {"max_tokens": max_tokens})
    per_category = variant.category_prompts or {}
    if variant.skeleton and spec is None:
        raise ValueError(f"variant {variant.name} writes its CoT under the spec's skeleton grammar: give the spec")
    grammars = {c: skeleton_grammar(spec, c) for c in prompts["category"].dropna().unique()
                if c in spec.categories} if variant.skeleton else {}

    def system(category) -> list[dict]:
        text = per_category.get(category, variant.system_prompt)
        return [{"role": "system", "content": text}] if text else []

    return [ChatRequest(messages=system(r.category) + [{"role": "user", "content": r.prompt}],
                        meta={"prompt_id": str(r.id), "variant": variant.name}, grammar=grammars.get(r.category),
                        **phase)
            for r in prompts.itertuples()]


def finish_prestarted(client, requests: list, results: list, max_tokens: Optional[int]) -> list:
    """The answers after pre-started chains of thought: each CoT, closed with </think>, is continued as stage 02
    continues it (generate.finish_answers: under the answer grammar after a skeleton CoT), each answer's result
    counting the tokens and seconds of its CoT's call too."""
    out = finish_answers(client, requests, results, max_tokens=max_tokens)
    return [answer if answer is cot else counting_the_cot(answer, cot) for cot, answer in zip(results, out)]


def counting_the_cot(answer: "ChatResult", cot: "ChatResult") -> "ChatResult":
    """The answer's result with the tokens and seconds of the call that wrote its chain of thought added."""
    answer.latency_s += cot.latency_s
    answer.usage = {k: answer.usage.get(k, 0) + cot.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
    return answer


def answer_with(variant: Variant, prompts: pd.DataFrame, params: RunParams, run_dir: Path, *,
                transport=None, progress: bool = False, spec: Optional[Spec] = None) -> list["ChatResult"]:
    """Ask `variant` every prompt through the cached client (on the embedded server, the calls that share a
    system prompt go one after another, so that it stays in the slot's prompt cache)."""
    ev = params.evaluate
    requests = answer_requests(variant, prompts, ev.max_tokens, ev.prestart_think, ev.cot_max_tokens, spec)
    if variant.role is None and variant.checkpoint:
        return _answer_with_transformers(variant, requests, params, run_dir, transport, progress)
    with ModelClient.for_run(params, variant.role, variant.name, STAGE, run_dir=run_dir, transport=transport,
                             progress=progress) as client:
        return _answer(client, requests, variant.name, ev, ev.batch, variant.skeleton)


def _answer(client, requests: list, desc: str, ev: EvaluateParams, batch: bool = False,
            skeleton: bool = False) -> list["ChatResult"]:
    """The replies, in two steps where the CoT is pre-started (evaluate.prestart_think, or a skeleton variant) and
    the server can continue it; a server that cannot is asked in one turn, without a skeleton grammar (which
    begins inside <think>)."""
    from dataclasses import replace

    requests, prestarted = client.unless_prestartable(requests, ev.max_tokens)
    if not prestarted:
        requests = [replace(r, grammar=None) for r in requests]
    results = client.chat_many(requests, desc=desc, batch=batch)
    if prestarted and (ev.prestart_think or skeleton):
        results = finish_prestarted(client, requests, results, ev.max_tokens)
    return results


def _answer_with_transformers(variant: Variant, requests: list, params: RunParams, run_dir: Path, transport,
                              progress: bool) -> list["ChatResult"]:
    """A checkpoint llama.cpp cannot take (trained from a Hugging Face model): merged if LoRA, then asked as a role
    of the transformers backend (its client starts `transformers serve` for the time of the calls, and samples as
    the policy does)."""
    ev = params.evaluate
    folder = merged_folder(resolve(variant.checkpoint), weights.base_model(params),
                           stage_dir(params, STAGE) / f"merged_{variant.name}")
    role = checkpoint_role(params.models.policy, folder)
    with ModelClient.for_run(params, role, variant.name, STAGE, run_dir=run_dir, transport=transport,
                             progress=progress) as client:
        return _answer(client, requests, variant.name, ev)


def checkpoint_role(policy: ModelRole, folder: Path) -> ModelRole:
    """The policy's sampling and limits, on a Hugging Face folder behind the transformers backend."""
    return policy.model_copy(update={"backend": "transformers", "model": str(folder), "base_url": None,
                                     "adapter": None, "api_key_env": None, "grammar": "auto",
                                     "prefill": "template" if policy.prefill == "template" else "off",
                                     "revision": None, "chat_template": None})


def evaluate_variants(variants: Sequence[Variant], prompts: pd.DataFrame, params: RunParams, spec: Spec,
                      run_dir: Path, *, transport=None, progress: bool = False, log=print) -> pd.DataFrame:
    """Every available variant's graded answers to `prompts`, one table."""
    tables = []
    for v in variants:
        if not v.available:
            log(f"{v.name}: {v.reason}")
            continue
        results = answer_with(v, prompts, params, run_dir, transport=transport, progress=progress, spec=spec)
        table = answers_table(v, prompts, results, spec, params.evaluate.style_threshold)
        failed = int(table["error"].notna().sum())
        log(f"{v.name}: {len(table) - failed} answers" + (f", {failed} failed requests" if failed else ""))
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def show_answers(answers: pd.DataFrame, n: int = 2, width: int = 220) -> str:
    """A few answers of each variant as text: the prompt, what the CoT cites, the action taken."""
    blocks = []
    for variant, g in answers.groupby("variant", sort=False):
        for r in g.head(n).itertuples():
            blocks.append(f"[{variant}] {r.prompt_id} ({r.category}, expected {r.expected_action}; took "
                          f"{r.answer_action}, {r.refusal})\n  prompt: {clip(r.prompt, width)}\n  cites : "
                          f"{', '.join(r.cited) if isinstance(r.cited, list) and r.cited else '(none)'}\n"
                          f"  cot   : {clip(r.cot, width)}\n  answer: {clip(r.answer, width)}")
    return "\n\n".join(blocks)


def told_levels(params: RunParams) -> dict:
    """For how many of stage 02's training prompts the generator was told the level (`generate.level_hint`), from
    what stage 02 wrote (not from the params, which may have changed since): {"told": n, "prompts": m}."""
    samples = files.read(params, files.SAMPLES, missing_ok=True)
    if samples.empty:
        return {"told": 0, "prompts": 0}
    told = samples["told_level"].eq(True) if "told_level" in samples else pd.Series(False, index=samples.index)
    return {"told": int(samples.loc[told, "prompt_id"].nunique()), "prompts": int(samples["prompt_id"].nunique())}


def same_model(a: Optional[ModelRole], b: Optional[ModelRole]) -> bool:
    """Whether two roles ask the same model (backend, model, server, adapter), whatever their sampling."""
    return a is not None and b is not None and \
        (a.backend, a.model, a.base_url, a.adapter) == (b.backend, b.model, b.base_url, b.adapter)


def evaluation_info(selected: pd.DataFrame, variants: Sequence[Variant], params: RunParams,
                    benchmarks: Optional[dict] = None) -> dict:
    """What stage 06 measured on, for the report and metrics.json."""
    ev = params.evaluate
    return {"prompts": int(len(selected)), "split": ev.split,
            "prompts_by_action": {a: int(n) for a, n in selected["expected_action"].value_counts().sort_index().items()},
            "prompt_ids": [str(i) for i in selected["id"]],
            # where each held-out prompt's labels came from (policy.prompts: file, level, model, seeded)
            "label_sources": {col: {str(k): int(n) for k, n in selected[col].fillna("file").value_counts().items()}
                              for col in ("category_source", "action_source") if col in selected},
            "variants_evaluated": [v.name for v in variants if v.available],
            "variants_not_available": {v.name: v.reason for v in variants if not v.available},
            "resamples": ev.bootstrap_resamples, "confidence": ev.confidence, "seed": params.seed,
            "max_tokens": ev.max_tokens, "prestart_think": ev.prestart_think, "style_threshold": ev.style_threshold,
            "baseline": ev.baseline, "primary": list(ev.primary),
            # stage 02 told the generator the level of these training prompts (generate.level_hint), as it wrote
            "generator_told_level": told_levels(params),
            "grading": "rule-based (delib.judging.graders), or models.grader where set (StrongREJECT's rubric too)",
            "graders": {"not_unsafe, not_overrefuse, correct_action, unclear, style": grader_name(params),
                        "xstest": "rules (refusal classifier)",
                        "strongreject": ("the grader (LLM rubric)" if params.models.grader is not None else
                                         "rules (refusal only: strongreject_refusal, not goodness)"),
                        "strongreject_grader_is_the_reward_judge": same_model(params.models.grader,
                                                                              params.models.judge)
                        and any(v.name == "sft_rl" and v.available for v in variants),
                        "rl_reward": "the judge (models.judge), answer only",
                        "rl_reward_shares_evaluation_graders":
                            shared_graders(params.rl.reward_weights) if params.rl.backend == "trl" else [],
                        # what of stage 03's selection (gates, score weights) stage 06 also grades with
                        "sft_selection_shares_evaluation_graders": shared_with_evaluation(params.judge)},
            **(benchmarks or {})}
