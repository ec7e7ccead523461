"""Stage 02 (generation): synthetic chains of thought written over the spec, and parsing them.

The generator G_base sees a prompt with `spec_for_category` and is asked to reason first in <think>...</think>,
cite the sections that apply, decide comply / refuse / safe_complete, cite the style guideline, and then answer
without policy talk. `parse_completion` splits what comes back and says why a sample is malformed.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import yaml

from .spec import Spec

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

GENERATOR_SYSTEM = """\
You are an assistant that follows a written safety specification. The part of the specification that applies \
to the user's request is below, between <spec> and </spec>. Every section starts with its id in square brackets.

<spec>
{spec}
</spec>

Answer in two parts.
First, reason inside <think> and </think>:
- say in a sentence what the user is asking for;
- name the sections of the specification that apply, citing each by its id in square brackets, e.g. [{example_id}];
- decide what the specification requires and write it on its own line as "Action: comply", "Action: refuse" \
or "Action: safe_complete";
- cite the style guideline for that action by its id.
Then, after </think>, write only the reply to the user. Follow the style guideline. The reply must not mention \
the specification, its sections, ids or policies."""

# Words that show the final answer talks about the spec instead of to the user.
POLICY_TALK = re.compile(r"\[[a-z0-9][\w.:-]*\]|\b(?:the|our|my) (?:safety )?(?:spec(?:ification)?|polic(?:y|ies)|"
                         r"guidelines?)\b|\bsection [a-z0-9-]+\b|\bAction:\s*(?:comply|refuse|safe_complete)",
                         re.IGNORECASE)
CITATION = re.compile(r"\[([A-Za-z0-9][\w.:-]*)\]")
ACTION_LINE = re.compile(r"action\s*[:=-]\s*\**\s*(comply|refuse|safe[ _-]?complet(?:e|ion))", re.IGNORECASE)

MALFORMED_REASONS = ("request_failed", "truncated", "no_cot", "no_answer", "policy_talk", "unknown_citation")


@dataclass
class Example:
    """A worked example (ours) for k-shot prompting of small generators."""

    category: str
    prompt: str
    cot: str
    answer: str

    def as_messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt},
                {"role": "assistant", "content": f"{THINK_OPEN}\n{self.cot.strip()}\n{THINK_CLOSE}\n{self.answer.strip()}"}]


def load_examples(path: str | Path, spec: Spec) -> list[Example]:
    """k-shot examples from YAML (a list of category, prompt, cot, answer); their citations must exist in the spec."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: examples file not found")
    rows = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    examples = []
    for i, row in enumerate(rows):
        missing = {"category", "prompt", "cot", "answer"} - set(row)
        if missing:
            raise ValueError(f"{path}: example {i} lacks {sorted(missing)}")
        unknown = [c for c in CITATION.findall(row["cot"]) if c not in spec.sections]
        if unknown:
            raise ValueError(f"{path}: example {i} cites ids the spec {spec.source} lacks: {unknown}")
        examples.append(Example(**{k: row[k] for k in ("category", "prompt", "cot", "answer")}))
    return examples


def generation_messages(prompt: str, spec_text: str, examples: Iterable[Example] = (),
                        example_id: str = "section-id") -> list[dict]:
    """The generator's chat: the spec for the prompt's category in the system turn, worked examples, the prompt."""
    messages = [{"role": "system", "content": GENERATOR_SYSTEM.format(spec=spec_text.strip(), example_id=example_id)}]
    for ex in examples:
        messages += ex.as_messages()
    messages.append({"role": "user", "content": prompt})
    return messages


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
    elif m := POLICY_TALK.search(answer):
        parsed.malformed, parsed.detail = "policy_talk", f"the answer says {m.group(0)!r}"
    else:
        known = set(spec_ids)
        unknown = [c for c in cited if c not in known]
        if unknown:
            parsed.malformed, parsed.detail = "unknown_citation", f"cites ids the spec lacks: {unknown}"
    return parsed

