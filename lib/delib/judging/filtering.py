"""Stage 03 (filtering) and its hand-off to training: which samples survive, and the SFT and RL sets they make.

The funnel counts samples at each step: generated, answered, well-formed, each of the spec's gates, judged (all k
judgements parsed), above the threshold, best of n per prompt, balanced across categories. The SFT set drops the spec from the prompt, so the model must recall it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd

from delib.generation.cot import THINK_CLOSE, THINK_OPEN, parse_completion
from delib.generation.skeleton import choices, style_sections
from delib.judging import graders
from delib.run.config import SCORE_WEIGHTS
from delib.spec.document import Spec

if TYPE_CHECKING:
    from delib.run.config import JudgeParams
from delib.run.io import clip


# What each of stage 03's gates checks (params: judge.gates), in the funnel's words.
GATES = {
    "cites_level": "the CoT cites a level of the prompt's own category",
    "applicable_level": "it cites the level the prompt set gives (prompts without one pass)",
    "action_of_level": "its action is the one the cited level prescribes",
    "style_of_action": "it cites the style section for that action",
    "answer_takes_action": "the answer's response type is that action",
    "expected_action": "the action is the prompt set's expected action",
}


# The gates and final-score parts of stage 03 that check what stage 06 also grades (the rules it counts with): SFT data
# selected by them is selected to pass the evaluation, and the report says so (judge.independent_selection: without).
SHARED_GATES = {"cites_level": "category_citation", "applicable_level": "citation_accuracy",
                "action_of_level": "category_citation: it needs a cited level of the category",
                "answer_takes_action": "the response type (not_unsafe, not_overrefuse, correct_action)"}
SHARED_WEIGHTS = {"action": "the response type (correct_action)", "citation": "category_citation",
                  "style": "the style scores"}


def selection(judge: "JudgeParams") -> tuple[list[str], dict[str, float]]:
    """The gates and score weights stage 03 selects with: the recipe's, or with `independent_selection` those that
    share nothing with stage 06's graders (the shared gates dropped, the shared weights at 0)."""
    weights = {**SCORE_WEIGHTS, **judge.score_weights}  # the final score takes a weight the recipe omits at its default
    if not judge.independent_selection:
        return list(judge.gates), weights
    return ([g for g in judge.gates if g not in SHARED_GATES],
            {k: (0.0 if k in SHARED_WEIGHTS else w) for k, w in weights.items()})


def shared_with_evaluation(judge: "JudgeParams") -> dict[str, list[str]]:
    """What of stage 03's selection stage 06 also grades with: {"gates": [...], "score_weights": [...]}, each
    item "<gate or weight> (<what stage 06 counts with it>)"."""
    gates, weights = selection(judge)
    return {"gates": [f"{g} ({SHARED_GATES[g]})" for g in gates if g in SHARED_GATES],
            "score_weights": [f"{k} ({SHARED_WEIGHTS[k]})" for k, w in weights.items()
                              if k in SHARED_WEIGHTS and w > 0]}


def gate_values(row, spec: Spec) -> dict[str, bool]:
    """Every gate's verdict on one sample (a row with category, cited, action, prompt, answer, expected_action, and
    optionally level: the name or section id of the level that applies, from the prompt set)."""
    cat = spec.categories.get(row.category)
    allowed: dict[str, set] = {}  # cited id -> the actions it may prescribe (the skeleton grammar's choices)
    for sid, act, _ in (choices(spec, row.category) if cat else []):
        allowed.setdefault(sid, set()).add(act)
    cited = list(row.cited) if isinstance(row.cited, (list, tuple)) else []
    first = next((c for c in cited if c in allowed), None)
    action = row.action if isinstance(row.action, str) else None
    styles = style_sections(spec, row.category, action) if cat and action else []
    answer = row.answer if isinstance(row.answer, str) else ""
    typed = graders.type_response(row.prompt, answer).action if action else None
    applicable = spec.level(row.category, getattr(row, "level", None))  # None where the prompt set gives none
    return {"cites_level": first is not None,
            "applicable_level": applicable is None or applicable["section"] in cited,
            "action_of_level": first is not None and action in allowed[first],
            # a spec with no style guideline for the action has nothing to cite
            "style_of_action": action is not None and (not styles or any(c in styles for c in cited)),
            "answer_takes_action": typed is not None and typed == action,
            "expected_action": action is not None and action == row.expected_action}


def apply_gates(usable: pd.DataFrame, spec: Spec, gates: Sequence[str]) -> tuple[pd.DataFrame, list]:
    """The samples that pass every gate in `gates` (applied in order, each a funnel step), with a `gate_*` column
    per gate; and the steps [(funnel label, samples left)]."""
    if usable.empty:
        return usable.assign(**{f"gate_{g}": pd.Series(dtype=bool) for g in GATES}), [
            (f"gate: {GATES[g]}", usable) for g in gates]
    values = pd.DataFrame([gate_values(r, spec) for r in usable.itertuples()], index=usable.index)
    out = usable.join(values.add_prefix("gate_"))
    steps, left = [], out
    for g in gates:
        left = left[left[f"gate_{g}"]]
        steps.append((f"gate: {GATES[g]}", left))
    return left, steps


def filter_samples(scored: pd.DataFrame, generated: pd.DataFrame, threshold: float, best_of_n: bool = True,
                   max_per_category: Optional[int] = None, gate_steps: Sequence = (), k: int = 1
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The samples kept for SFT, and the funnel table (step, samples, prompts, share of generated). A sample with a
    judgement that failed (request or unparseable reply) fails the judge: min of k needs all k."""
    steps = [("generated", generated),
             ("answered (request ok)", generated[generated["malformed"] != "request_failed"]),
             ("well-formed", generated[generated["malformed"].isna()]), *gate_steps,
             (f"judged: all {k} judgement(s) parsed", scored[scored["judged"] >= k])]
    kept = scored[(scored["judged"] >= k) & (scored["final_score"] >= threshold)]
    steps.append((f"final score >= {threshold:g}", kept))
    if best_of_n and not kept.empty:
        kept = (kept.sort_values(["final_score", "sample_index"], ascending=[False, True])
                .groupby("prompt_id", sort=False).head(1))
        steps.append(("best of n per prompt", kept))
    if max_per_category and not kept.empty:
        kept = (kept.sort_values("final_score", ascending=False).groupby("category", sort=False)
                .head(max_per_category))
        steps.append((f"at most {max_per_category} per category", kept))
    total = max(1, len(generated))
    funnel = pd.DataFrame([{"step": name, "samples": len(df), "prompts": df["prompt_id"].nunique() if len(df) else 0,
                            "share": round(len(df) / total, 3)} for name, df in steps])
    return kept.sort_values(["category", "prompt_id"]).reset_index(drop=True), funnel


def fate(row, spec: Spec, gates: Sequence[str], scored: pd.DataFrame, kept: pd.DataFrame, threshold: float,
         k: int = 1) -> str:
    """Why one generated sample was kept for SFT or dropped, in words: malformed, the first gate it failed, a failed
    judgement, the threshold, or another sample of its prompt."""
    if isinstance(row.malformed, str):
        return f"dropped: malformed ({row.malformed})"
    values = gate_values(row, spec)
    failed = next((g for g in gates if not values[g]), None)
    if failed:
        return f"dropped at a gate: not true that {GATES[failed]}"
    key = (row.prompt_id, row.sample_index)
    mine = scored[(scored["prompt_id"] == row.prompt_id) & (scored["sample_index"] == row.sample_index)]
    if mine.empty:
        return "dropped: not judged (beyond judge.max_prompts)"
    s = mine.iloc[0]
    if s["judged"] < k:
        return f"dropped: {k - int(s['judged'])} of its {k} judgement(s) failed"
    if s["final_score"] < threshold:
        return f"dropped: final score {s['final_score']:.2f} below the threshold {threshold:g}"
    if key in set(zip(kept["prompt_id"], kept["sample_index"])):
        return f"kept for SFT (final score {s['final_score']:.2f})"
    return "dropped: another sample of its prompt scored higher, or its category was full"


def sample_cards(samples: pd.DataFrame, scored: pd.DataFrame, judgements: pd.DataFrame, kept: pd.DataFrame,
                 spec: Spec, gates: Sequence[str], threshold: float, k: int = 1, n: int = 3) -> str:
    """A card per sample, for reading stage 03 as a student would: the CoT and answer, the judge's scores with its
    rationale, the rule checks, the final score, and whether it was kept or why it was dropped. Up to n kept
    samples, then up to n dropped ones."""
    kept_keys = set(zip(kept["prompt_id"], kept["sample_index"]))
    order = sorted(samples.itertuples(), key=lambda r: (r.prompt_id, r.sample_index) not in kept_keys)
    cards, counts = [], {"kept": 0, "dropped": 0}
    for r in order:
        verdict = fate(r, spec, gates, scored, kept, threshold, k)
        kind = "kept" if verdict.startswith("kept") else "dropped"
        if counts[kind] >= n:
            continue
        counts[kind] += 1
        lines = [f"[{r.prompt_id} #{r.sample_index}] {r.category}, expected {r.expected_action}: {verdict}",
                 f"  prompt : {r.prompt}", f"  cot    : {clip(r.cot, 300)}", f"  answer : {clip(r.answer, 300)}"]
        mine = judgements[(judgements["prompt_id"] == r.prompt_id) & (judgements["sample_index"] == r.sample_index)]
        for j in mine.itertuples():
            if isinstance(j.error, str):
                lines.append(f"  judge #{j.judgement}: failed ({clip(j.error, 120)})")
            else:
                lines.append(f"  judge #{j.judgement}: overall {j.overall}, action {j.action_correct}, style {j.style}, "
                             f"CoT {j.cot_quality}; rationale: {clip(j.rationale, 200)}")
        s = scored[(scored["prompt_id"] == r.prompt_id) & (scored["sample_index"] == r.sample_index)]
        if not s.empty:
            s = s.iloc[0]
            style = f"{s['style_score']:.2f}" if isinstance(s["style_score"], (int, float)) and \
                not pd.isna(s["style_score"]) else "none (no style checks for this action)"
            lines.append(f"  rules  : answer typed {s['answer_action']}, CoT action matches "
                         f"{bool(s['cot_action_matches'])}, style score {style}; final score {s['final_score']:.2f}")
        cards.append("\n".join(lines))
    return "\n\n".join(cards) if cards else "(no samples)"


def assistant_text(cot: str, answer: str) -> str:
    """The trained assistant turn: the chain of thought in <think>, then the answer."""
    return f"{THINK_OPEN}\n{cot.strip()}\n{THINK_CLOSE}\n{answer.strip()}"


def sft_rows(kept: pd.DataFrame) -> list[dict]:
    """(prompt without the spec, CoT, answer) as chat messages, with the labels kept beside them."""
    return [{"messages": [{"role": "user", "content": r.prompt},
                          {"role": "assistant", "content": assistant_text(r.cot, r.answer)}],
             "prompt_id": r.prompt_id, "category": r.category, "expected_action": r.expected_action,
             "final_score": float(r.final_score)} for r in kept.itertuples()]


def rl_rows(prompts: pd.DataFrame) -> list[dict]:
    """The RL set: training prompts with their category and expected action (the reward needs both)."""
    train = prompts[prompts["split"] == "train"]
    return [{"prompt_id": r.id, "prompt": r.prompt, "category": r.category, "expected_action": r.expected_action}
            for r in train.itertuples()]


def openai_chat_rows(rows: list[dict]) -> list[dict]:
    """The SFT rows in OpenAI's chat fine-tuning format: one {"messages": [...]} object per line, nothing else."""
    return [{"messages": r["messages"]} for r in rows]


def export_hf_dataset(folder: Path, rows: list[dict]) -> Path:
    """A Hugging Face `datasets` folder (load it with datasets.load_from_disk)."""
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def import_deliberative(path: str | Path, spec_ids) -> tuple[list[dict], pd.DataFrame]:
    """External deliberative data of the same kind (a JSON list of {question, response with <think>, category})
    as SFT rows; malformed responses are dropped and counted by reason."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of objects with question, response and category")
    rows, reasons = [], {}
    for i, item in enumerate(items):
        missing = {"question", "response", "category"} - set(item)
        if missing:
            raise ValueError(f"{path}: item {i} lacks {sorted(missing)}")
        parsed = parse_completion(item["response"], "stop", spec_ids)
        if parsed.malformed:
            reasons[parsed.malformed] = reasons.get(parsed.malformed, 0) + 1
            continue
        rows.append({"messages": [{"role": "user", "content": item["question"]},
                                  {"role": "assistant", "content": assistant_text(parsed.cot, parsed.answer)}],
                     "prompt_id": f"import-{i}", "category": item["category"], "expected_action": parsed.action,
                     "final_score": None})
    counts = pd.DataFrame([{"kept": len(rows), **reasons}])
    return rows, counts
