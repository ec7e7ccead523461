"""Stage 05 (RL): the reward. The same spec-aware judge as stage 03, applied to the final answer only: the chain of
thought is cut off before anything grades the completion, so that the CoT is not optimised to look good to the
grader (the paper's choice).

The reward is partial credit in [0, 1], the weighted mean (`rl.reward_weights`) of the judge's scores out of 10:
overall (`judge`), whether the answer took the spec's action (`judge_action`) and followed its style
(`judge_style`). A small model rarely earns a perfect overall score, but often earns the action or some style.

By default nothing in the reward is computed by the functions stage 06 grades with, so RL is not trained on the
very rules it is then scored by. A recipe may add them (`rule_action`: the rules' response type equals the
expected action; `rule_style`: the rules' style score); the report then names the shared graders as a caveat
(`shared_graders`).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from pydantic import Field

from delib.generation.cot import THINK_CLOSE, THINK_OPEN
from delib.judging.graders import (completion_text, grade_propositions, last_user_message, spec_checks, style_score,
                                   type_response)
from delib.judging.judge import AnswerVerdict, judge_messages
from delib.models import ChatRequest

if TYPE_CHECKING:
    from delib.models import ModelClient
    from delib.run.config import RunParams

JUDGE_PARTS = {"judge": "overall", "judge_action": "action_correct", "judge_style": "style"}  # weight -> criterion
RULE_PARTS = {"rule_action": "graders.type_response", "rule_style": "graders.style_score"}  # shared with stage 06


def shared_graders(weights: Mapping[str, float]) -> list[str]:
    """The stage 06 graders that the reward uses with a positive weight (none by default)."""
    return [RULE_PARTS[k] for k in RULE_PARTS if weights.get(k, 0) > 0]


class RewardVerdict(AnswerVerdict):
    """The judge's answer-only verdict with a one-line rationale: the reward is computed every RL step, and on a
    small CPU judge most of its time goes into writing the rationale (the grammar bounds its length)."""

    rationale: str = Field("", max_length=80)


def visible_answer(completion: str) -> str:
    """What the user would see of a completion: the text after </think>; nothing while the CoT is unfinished
    (truncated inside <think>); the whole text when the model wrote no CoT at all."""
    text = completion or ""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].replace(THINK_OPEN, "").strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


def answer_reward(verdict: Optional[dict], prompt: str, answer: str, category: str, expected_action: str,
                  weights: Mapping[str, float], style_checks: Optional[Mapping] = None) -> dict:
    """The reward of one final answer and its parts (each 0-1). An empty answer earns 0; an answer the judge could
    not grade earns no judge share. Rule parts are computed only when their weight is positive; `style_checks`: the
    category's own style checks for the expected action (stage 01's spec_for_category.json carries them)."""
    parts: dict[str, Optional[float]] = {k: None for k in (*JUDGE_PARTS, *RULE_PARTS)}
    if not answer.strip():
        return {"reward": 0.0, **parts, "answer_action": None}
    for key, criterion in JUDGE_PARTS.items():
        parts[key] = (verdict or {}).get(criterion, 0) / 10
    action = None
    if any(weights.get(k, 0) > 0 for k in RULE_PARTS):
        props = grade_propositions(prompt, answer)
        action = type_response(prompt, answer, props).action
        parts["rule_action"] = float(action == expected_action)
        parts["rule_style"] = style_score(expected_action, props, style_checks)
    total = sum(weights.values())
    reward = sum(w * (parts[k] or 0.0) for k, w in weights.items()) / total
    return {"reward": round(reward, 4), **{k: None if v is None else round(v, 4) for k, v in parts.items()},
            "answer_action": action}


class AnswerReward:
    """A GRPO reward function: `reward(prompts, completions, category, expected_action, ...)` -> list of floats.

    Each completion is cut to its visible answer first (`visible_answer`); only the answer reaches the judge
    (`judge_messages(..., cot=None)`) and the rules. Every graded completion is appended to `log_path` (JSONL).
    """

    __name__ = "answer_reward"  # TRL names the reward's log columns after it

    def __init__(self, judge: "ModelClient", spec_for_category: dict[str, dict], weights: dict[str, float],
                 show_expected_action: bool = True, log_path: Optional[Path] = None, template: Optional[str] = None):
        self.judge, self.spec_for_category, self.weights = judge, spec_for_category, weights
        self.template = template  # the judge template (None: the default)
        self.style_checks = {c: r.get("checks", {}) for c, r in spec_for_category.items()}  # stage 01 wrote them
        self.show_expected_action = show_expected_action
        self.log_path = Path(log_path) if log_path else None
        self.calls = 0
        self.last_messages: list[list[dict]] = []  # what the judge was shown in the latest call
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, params: "RunParams", judge: "ModelClient", spec_for_category: dict[str, dict],
                log_path: Optional[Path] = None) -> "AnswerReward":
        """The reward as the recipe sets it: `rl.reward_weights`, `judge.show_expected_action`, the judge template."""
        from delib.run.templates import load_template

        return cls(judge, spec_for_category, params.rl.reward_weights, params.judge.show_expected_action, log_path,
                   template=load_template("judge", params))

    def score(self, prompts: Sequence[str], answers: Sequence[str], categories: Sequence[str],
              expected_actions: Sequence[str]) -> list[dict]:
        """Grade final answers (no CoT anywhere in the signature): one dict of reward parts per answer."""
        requests, index = [], []
        for i, (prompt, answer, category, expected) in enumerate(zip(prompts, answers, categories, expected_actions)):
            if answer.strip():
                messages = judge_messages(prompt, answer, self.spec_for_category[category]["text"], cot=None,
                                          expected_action=expected if self.show_expected_action else None,
                                          template=self.template)
                requests.append(ChatRequest(messages=messages, response_model=RewardVerdict,
                                            meta={"reward_item": i}))
                index.append(i)
        verdicts: dict[int, dict] = {}
        self.last_messages = [r.messages for r in requests]
        if requests:
            for i, result in zip(index, self.judge.chat_many(requests, desc="reward judge")):
                if result.parsed is not None:
                    verdicts[i] = result.parsed.model_dump()
        return [answer_reward(verdicts.get(i), p, a, c, e, self.weights,
                              spec_checks(self.style_checks, c, e))
                for i, (p, a, c, e) in enumerate(zip(prompts, answers, categories, expected_actions))]

    def __call__(self, prompts, completions, category, expected_action, prompt_id=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        answers = [visible_answer(t) for t in texts]
        prompt_texts = [last_user_message(p) for p in prompts]
        scored = self.score(prompt_texts, answers, category, expected_action)
        with self._lock:
            self.calls += 1
            done = getattr(kwargs.get("trainer_state"), "global_step", None)
            step = None if done is None else done + 1  # the optimizer step these completions feed (as in log.jsonl)
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    for j, (text, answer, parts) in enumerate(zip(texts, answers, scored)):
                        f.write(json.dumps({"call": self.calls, "step": step,
                                            "prompt_id": prompt_id[j] if prompt_id else None,
                                            "category": category[j], "expected_action": expected_action[j],
                                            "answer": answer, "completion": text, **parts},
                                           ensure_ascii=False) + "\n")
        return [s["reward"] for s in scored]
