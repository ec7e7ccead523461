"""Stage 07: findings written from the numbers: what differs significantly, what could not be shown, caveats.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from delib.evaluation.metrics import fmt, fmt_diff, shown_differences
from delib.evaluation.reading import HEADLINE, headline, not_available


def percent(confidence: float) -> str:
    """0.95 -> "95%", 0.975 -> "97.5%"."""
    return f"{confidence * 100:.3g}%"


def _labels(variants: pd.DataFrame) -> dict[str, str]:
    from delib.evaluation.lineup import LABELS  # the chance references are in no variants table
    return {**LABELS, **(dict(zip(variants["variant"], variants["label"])) if not variants.empty else {})}


def findings(metrics: pd.DataFrame, diffs: pd.DataFrame, variants: pd.DataFrame, info: dict,
             keys: Sequence[str] = HEADLINE) -> list[str]:
    """What the run did and did not show, in sentences built from the numbers."""
    out: list[str] = []
    labels = _labels(variants)
    counts = info.get("prompts_by_action", {})
    n = info.get("prompts")
    confidence = info.get("confidence", 0.95)
    if n:
        split = info.get("split", "dev")
        where = ("of the locked test split" if split == "test" else
                 f"of the {split} split (tuned on: a development figure; the locked test split is for the run you "
                 "publish, evaluate.split: test)")
        out.append(f"Each variant answered {n} held-out prompts {where} ("
                   + ", ".join(f"{v} {k}" for k, v in counts.items())
                   + f"). Intervals are {percent(confidence)} percentile bootstrap intervals over prompts "
                   f"({info.get('resamples')} "
                   "resamples); with this few prompts an interval is typically several tenths wide, so only large "
                   "effects can show, and an interval of zero width (e.g. [0.00, 0.00]) means that every counted "
                   "answer agreed, not that the value is certain: read it with its n. A difference is called "
                   "significant only when its paired interval excludes 0 and the exact sign test over the prompts "
                   "where the two variants differ, adjusted for the run's many comparisons (Holm over the primary "
                   f"metrics, Benjamini-Hochberg over the rest), gives p < {1 - confidence:.2g}. These intervals cover "
                   "the sampling of prompts only, not the run's seed (another seed draws other samples and trains "
                   "another model): `delib sweep` over seeds pools the seeds.")
    for line in not_available(variants):
        out.append(f"Not evaluated: {line}. No number is reported for it.")
    out += verdict(metrics, diffs, variants, info.get("baseline", "base"))
    keys = headline([*metrics.get("key", ()), *diffs.get("key", ())], keys)
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
        kind = "highest (worst)" if key in ("unclear", "truncated") else "highest"
        text = (f"{key}: {kind} {labels.get(best.variant, best.variant)} {fmt(best.value, best.lo, best.hi)}"
                f" (n={best.n})")
        if len(rows) > 1:
            text += f", lowest {labels.get(worst.variant, worst.variant)} {fmt(worst.value, worst.lo, worst.hi)}"
        out.append(text + ".")
    for r in metrics[(metrics["key"] == "answered") & (metrics["value"] < 1)].itertuples():
        out.append(f"{labels.get(r.variant, r.variant)}: {round((1 - r.value) * r.n)} of {r.n} replies have no answer "
                   "(cut off inside the chain of thought: truncated; or empty: unclear), counted as neither safe, "
                   "nor not over-refused, nor correct.")
    if "up" not in diffs:  # a differences.csv written before up/down (raw counts) were kept beside better/worse
        diffs = diffs.assign(up=diffs["better"], down=diffs["worse"])
    d = diffs[diffs["key"].isin(keys)]
    d = shown_differences(d, info.get("baseline", "base")) if "baseline" in d else d
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
                f"{r.key} {fmt_diff(r.diff, r.lo, r.hi)} ({r.up} prompts up, {r.down} down)"
                for r in nonsig.itertuples()) + ".")
            alpha = float(g["confidence"].iloc[0]) if "confidence" in g else 0.95
            floor = sign_test_floor(1 - alpha)
            few = nonsig[(nonsig["up"] + nonsig["down"]) < floor]
            if not few.empty:
                out.append(f"{name}: {', '.join(few['key'])} could not have been significant: fewer than {floor} "
                           f"prompts differ, and the sign test's smallest p with {floor - 1} is "
                           f"{2 * 0.5 ** (floor - 1):.3g} (not below {1 - alpha:.2g}); more prompts are needed.")
        if not same.empty:
            out.append(f"{name}, no difference at all: {', '.join(same['key'])}.")
    return out


def sign_test_floor(alpha: float) -> int:
    """The fewest differing prompts with which the two-sided exact sign test can give p < alpha (all one way)."""
    n = 1
    while 2 * 0.5 ** n >= alpha:
        n += 1
    return n


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
            parts.append(f"cites the section of the level that applies for {fmt(ca['value'], ca['lo'], ca['hi'])}")
        text = f"{labels.get(v, v)} " + ", and ".join(parts) if parts else labels.get(v, v)
        primary = diffs[(diffs["variant"] == v) & (diffs["family"] == "primary")] if "family" in diffs else \
            diffs.iloc[:0]
        if len(primary):  # each primary metric against its strongest untrained baseline
            text += "; primary, against the strongest untrained baseline of each: " + ", ".join(
                f"{r.key} against {labels.get(r.baseline, r.baseline)} {fmt_diff(r.diff, r.lo, r.hi)} "
                f"(Holm p {r.p_holm:.2g}, {'significant' if r.significant else 'not significant'})"
                for r in primary.itertuples())
        else:
            d = diffs[(diffs["variant"] == v) & (diffs["baseline"] == baseline)].set_index("key")
            comp = [f"{k} {fmt_diff(d.loc[k, 'diff'], d.loc[k, 'lo'], d.loc[k, 'hi'])} "
                    f"({'significant' if d.loc[k, 'significant'] else 'not significant'})"
                    for k in ("not_unsafe", "not_overrefuse", "citation_accuracy") if k in d.index]
            if comp:
                text += f"; against {labels.get(baseline, baseline)}: " + ", ".join(comp)
        out.append(text + ".")
    if not trained:
        out.append("No trained model was evaluated, so this run says nothing about what training achieved.")
    else:
        against = diffs["baseline"] == baseline
        if "family" in diffs:  # primary: against the strongest baseline; exploratory: against `baseline` as before
            against = (diffs["family"] == "primary") | against
        sig = diffs[diffs["variant"].isin(trained) & against & diffs["significant"]
                    & diffs["key"].isin(["not_unsafe", "not_overrefuse", "citation_accuracy", "correct_action",
                                         "style_hard_refusal", "format_adherence"])]
        if sig.empty:
            out.append("On these prompts no trained variant is significantly better or worse than the untrained "
                       "model on safety, over-refusal, correct action, refusal style, format or policy citation: "
                       "this run does not reproduce the paper's effects (on "
                       f"{int(metrics['n'].max()) if len(metrics) else 0} prompts; see the training section for "
                       "the model and its steps).")
        else:
            family = (lambda r: f" ({r.family})") if "family" in sig else (lambda r: "")  # noqa: E731
            out.append("Significant against an untrained model: " + "; ".join(
                f"{labels.get(r.variant, r.variant)} {r.key} against {labels.get(r.baseline, r.baseline)} "
                f"{fmt_diff(r.diff, r.lo, r.hi)}{family(r)}" for r in sig.itertuples()) + ".")
    if "family" in diffs and len(diffs):
        n, primary = len(diffs), int((diffs["family"] == "primary").sum())
        alpha = 1 - float(diffs["confidence"].iloc[0])
        out.append(f"This run made {n} comparisons: {primary} primary (the metrics evaluate.primary declares, a "
                   f"trained variant against the strongest untrained baseline of the metric, chance references "
                   f"included; Holm-adjusted p), {n - primary} exploratory "
                   f"(Benjamini-Hochberg q). A difference is significant when its interval excludes 0 and its "
                   f"adjusted p or q is below {alpha:.2g}; an exploratory one is a lead, not a result.")
    return out


CAVEATS = [
    "Grading is rule-based: the refusal classifier (XSTest's three labels) decides the refusal class, and the "
    "response type (comply, refuse, safe_complete, unclear) is read from it and from rule-decided propositions; "
    "the refusal class's and the propositions' agreement with human labels is in 'How far to trust the graders' "
    "(the response type has no human-labelled set of its own yet). not_unsafe counts an answer as safe when it "
    "refused or safe-completed; rules do not read whether content is harmful, so a partial refusal, or an answer "
    "with a pointer to help on a prompt to safe-complete, counts as safe whatever its content.",
    "An answer the rules cannot type (empty, a loop, no content) is 'unclear', and a reply cut off inside its chain of "
    "thought is 'truncated': neither counts as safe, nor not over-refused, nor correct, and their shares are reported "
    "per variant.",
    "StrongREJECT's convincing and specific scores, when present, are graded by an LLM (models.grader; in runs "
    "before 2026-12-06, the judge); with the small embedded model, read them as a pipeline check, not a measurement "
    "of harm. Without a grader the report gives strongreject_refusal@0.1 (the rules' refusal decision only).",
    "Latency is wall time per answer on the machine that ran the evaluation: noisy, and not comparable across "
    "machines.",
]


def caveats(info: dict) -> list[str]:
    """The standing caveats, and this run's own: an RL reward that shares the evaluation's graders."""
    graders = info.get("graders", {})
    shared = graders.get("rl_reward_shares_evaluation_graders") or []
    extra = [f"The RL reward of this run uses {', '.join(shared)}, which stage 06 also grades with: RL was trained "
             "on functions it is then scored by, so its gains on the metrics they decide may be overstated."
             ] if shared else []
    if graders.get("strongreject_grader_is_the_reward_judge"):
        extra.append("StrongREJECT's rubric was graded by the same model as the RL reward (models.grader is "
                     "models.judge): RL was trained to please the grader of this benchmark; set another grader.")
    by_model = {col: n for col, counts in info.get("label_sources", {}).items() if (n := counts.get("model", 0))}
    if by_model:
        what = " and ".join(f"{n} {'categories' if col == 'category_source' else 'expected actions'}"
                            for col, n in by_model.items())
        extra.append(f"Of the held-out prompts' labels, {what} were given by the labeller model at stage 01 (its "
                     "agreement with the prompt set's own labels is in stage 01's notebook), not by the prompt set: "
                     "every metric that reads a category or an expected action counts them as given.")
    selection = graders.get("sft_selection_shares_evaluation_graders") or {}
    said = [f"gates {', '.join(selection['gates'])}" if selection.get("gates") else "",
            f"score weights {', '.join(selection['score_weights'])}" if selection.get("score_weights") else ""]
    if any(said):
        extra.append("Stage 03 selected the SFT data partly with what stage 06 grades with ("
                     + "; ".join(s for s in said if s) + "): the data was selected to pass those checks, so the "
                     "trained variants' gains on the metrics they decide may be overstated. "
                     "judge.independent_selection: true selects without them.")
    elif graders.get("sft_filter_shares_evaluation_graders"):  # a run of before the gates were disclosed
        extra.append("Stage 03 kept SFT samples partly by the rules stage 06 grades with (judge.score_weights: "
                     f"{', '.join(graders['sft_filter_shares_evaluation_graders'])}): the SFT data was selected to "
                     "pass them, so SFT's gains on action and style may be overstated.")
    return extra + CAVEATS


def summary(metrics: pd.DataFrame, diffs: pd.DataFrame, variants: pd.DataFrame, info: dict, training: dict,
            funnel: pd.DataFrame) -> list[str]:
    """The report's opening paragraphs: what was trained, what the trained variants do and how they differ from the
    baseline (with intervals; significant or not), what this n cannot show, and the main caveat."""
    out = [trained_on(training, funnel, info)]
    out += verdict(metrics, diffs, variants, info.get("baseline", "base"))
    alpha = 1 - info.get("confidence", 0.95)
    floor = sign_test_floor(alpha)
    n = info.get("prompts")
    if n:
        out.append(f"Each variant answered {n} held-out prompts. A difference is significant only when its paired "
                   f"{percent(info.get('confidence', 0.95))} interval excludes 0 and the sign test agrees after the "
                   f"adjustment for many comparisons, which needs at least {floor} prompts that differ, all one way "
                   "(more after the adjustment); on a metric counted over fewer prompts "
                   "(by expected action or by category) most differences cannot reach it.")
    out.append(caveats(info)[0])
    return out


def trained_on(training: dict, funnel: pd.DataFrame, info: Optional[dict] = None) -> str:
    """One sentence on the data and steps of stages 04-05, from their training.json, stage 03's funnel and what
    stage 06 recorded of the RL reward (`info["graders"]`)."""
    sft, rl = training.get("04_sft"), training.get("05_rl")
    parts = []
    if sft:
        kept = ""
        if not funnel.empty and {"step", "samples"} <= set(funnel.columns):
            kept = f" (kept by stage 03 from {int(funnel['samples'].iloc[0])} generated)"
        steps = f" for {sft['steps']} steps" if sft.get("steps") else ""
        hinted = (info or {}).get("generator_told_level") or {}
        told = (f", written by a generator told the level of {hinted['told']} of its {hinted['prompts']} training "
                "prompts (generate.level_hint)" if hinted.get("told") else "")
        parts.append(f"SFT trained on {sft.get('examples', 'its')} samples{kept}{steps}"
                     + (" (LoRA)" if sft.get("lora") else "") + told)
    if rl:
        shared = ((info or {}).get("graders", {}) or {}).get("rl_reward_shares_evaluation_graders") or []
        by = "the judge" + (f" and the rules' {', '.join(shared)}" if shared else "")
        steps = f" {rl['steps']}" if rl.get("steps") else ""
        parts.append(f"RL ran{steps} GRPO steps from "
                     + ("the SFT model" if rl.get("from_sft", True) else "the base model")
                     + (f" on {rl['prompts_seen']} prompts" if rl.get("prompts_seen") else "")
                     + f", rewarded by {by} on the final answer only")
    return ("; ".join(parts) + ".") if parts else "No model was trained in this run (stages 04-05 wrote no log)."
