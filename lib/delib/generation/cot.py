"""Stage 02's chain-of-thought format: <think> CoT </think> answer, the ids it cites, the action it decides,
and why a completion is malformed. Stages 03-06 read completions with it.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    pass


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# An action as a CoT names it after `Action:` (safe_complete also as "safe-complete", "safe completion").
ACTION_WORD = r"(comply|refuse|safe[ _-]?complet(?:e|ion))"


# Words that show the final answer talks about the spec instead of to the user.
POLICY_TALK = re.compile(r"\[[a-z0-9][\w.:-]*\]|\b(?:the|our|my) (?:safety )?(?:spec(?:ification)?|polic(?:y|ies)|"
                         rf"guidelines?)\b|\bsection [a-z0-9-]+\b|\bAction:\s*{ACTION_WORD}", re.IGNORECASE)


CITATION = re.compile(r"\[([A-Za-z0-9][\w.:-]*)\]")


ACTION_LINE = re.compile(rf"action\s*[:=-]\s*\**\s*{ACTION_WORD}", re.IGNORECASE)


# The heads of the structured CoT's lines (skeleton.py writes them); an answer that has them writes the CoT again.
ASKS, APPLICABLE, REASONING, ACTION, STYLE = "The user asks", "Applicable:", "Reasoning:", "Action:", "Style:"
_LINES = {head: re.compile(f"^{pattern}", re.MULTILINE) for head, pattern in {  # the lines as the skeleton writes them
    ASKS: r"The user asks\b", APPLICABLE: "Applicable:", REASONING: "Reasoning:",
    ACTION: rf"Action: ?{ACTION_WORD}\b", STYLE: r"Style: ?\["}.items()}
_CLOSE_LINE = re.compile(rf"^[ \t]*{re.escape(THINK_CLOSE)}[ \t]*$", re.MULTILINE)


def cot_again(answer: str) -> Optional[str]:
    """What shows that `answer` writes the chain of thought again instead of answering, or None: a line that is
    </think>, an answer that opens as the CoT does ("The user asks"), or two different heads of the CoT's lines
    at the start of lines, as the skeleton writes them (`Action: refuse`, not `Action: call a doctor`). A small model
    trained on structured CoTs often does this; one line headed `Reasoning:` in an answer that works a sum is an
    answer of its own."""
    if m := _CLOSE_LINE.search(answer):
        return m.group(0).strip()
    if answer.lstrip().startswith(ASKS):
        return ASKS
    found = [head for head, line in _LINES.items() if line.search(answer)]
    return ", ".join(found) if len(found) >= 2 else None


MALFORMED_REASONS = ("request_failed", "truncated", "no_cot", "no_answer", "cot_in_answer", "policy_talk",
                     "unknown_citation")


@dataclass
class ParsedCompletion:
    cot: str
    answer: str
    cited: list[str] = field(default_factory=list)  # section ids cited in the CoT, in order, without repeats
    action: Optional[str] = None  # the action the CoT decided, when it says so
    malformed: Optional[str] = None  # one of MALFORMED_REASONS, or None for a usable sample
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_action(text: str) -> str:
    text = text.lower().replace("-", "_").replace(" ", "_")
    return "safe_complete" if text.startswith("safe") else text


def parse_completion(text: Optional[str], finish_reason: Optional[str], spec_ids: Iterable[str],
                     cot_hidden: bool = False) -> ParsedCompletion:
    """Split a completion into CoT and answer, extract its citations and decided action, and judge its form.

    A completion whose opening <think> is missing but whose </think> is there is accepted (small models often
    drop the opening tag). `cot_hidden` marks a reasoning model whose API keeps the CoT to itself: its answer is
    kept and the sample is marked no_cot.
    """
    text = (text or "").strip()
    if finish_reason == "length":
        cot, _, answer = text.partition(THINK_CLOSE)
        return ParsedCompletion(cot.replace(THINK_OPEN, "").strip(), answer.strip(), malformed="truncated",
                                detail="hit max_tokens before finishing")
    if THINK_CLOSE not in text:
        return ParsedCompletion("", text, malformed="no_cot",
                                detail="hidden by the API" if cot_hidden else f"no {THINK_CLOSE} in the completion")
    head, _, answer = text.partition(THINK_CLOSE)
    cot = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
    cot, answer = cot.strip(), answer.replace(THINK_OPEN, "").strip()
    cited = list(dict.fromkeys(CITATION.findall(cot)))
    decided = ACTION_LINE.findall(cot)
    action = normalise_action(decided[-1]) if decided else None
    parsed = ParsedCompletion(cot, answer, cited, action)
    if not cot:
        parsed.malformed, parsed.detail = "no_cot", "empty <think> block"
    elif not answer:
        parsed.malformed, parsed.detail = "no_answer", f"nothing after {THINK_CLOSE}"
    elif shown := cot_again(answer):
        parsed.malformed, parsed.detail = "cot_in_answer", f"the answer writes the CoT again: {shown}"
    elif m := POLICY_TALK.search(answer):
        parsed.malformed, parsed.detail = "policy_talk", f"the answer says {m.group(0)!r}"
    else:
        known = set(spec_ids)
        unknown = [c for c in cited if c not in known]
        if unknown:
            parsed.malformed, parsed.detail = "unknown_citation", f"cites ids the spec lacks: {unknown}"
    return parsed
