"""Structured chains of thought for small generators: a skeleton that the spec fills in, enforced by a llama.cpp
grammar (GBNF) while the CoT is written.

    The user asks <what the request is>
    Applicable: [<a level of the prompt's category>]
    Reasoning: <free text>
    Action: <the action that level prescribes>
    Style: [<the style section for that action>]

The applicable level, the action and the style are one choice of the grammar, so every cited id is a real id of the
prompt's category, the action is the one its level prescribes and the style is the one for that action. Which level
applies is left to the model: that is what the filter gates and several samples per prompt select on. Free text is
words only (no digits, brackets or tags) and one line each, so a 135M model cannot loop on numbers or invent ids.
"""
from __future__ import annotations

import json
from typing import Optional

from delib.generation.cot import ACTION, APPLICABLE, ASKS, REASONING, STYLE
from delib.spec.document import ACTIONS, Spec


def style_sections(spec: Spec, category: str, action: str) -> list[str]:
    """The style sections for `action` in `category`: the category's own guideline for that action where it has one
    (`style` under the category: by action, or a list for safe_complete), else the spec's guideline for the action."""
    cat = spec.categories[category]
    own = cat.style_by_action or ({"safe_complete": cat.style} if cat.style else {})  # a spec.json of before
    return list(own.get(action) or spec.style.get(action, []))


def choices(spec: Spec, category: str) -> list[tuple[str, str, Optional[str]]]:
    """(cited id, action, style id) the skeleton may take for a prompt of `category`: one per level, or, for a
    category without levels, each of its sections with each action."""
    cat = spec.categories[category]
    if cat.levels:
        pairs = [(lv.get("section") or cat.sections[0], lv["action"]) for lv in cat.levels]
    else:
        pairs = [(sid, action) for sid in cat.sections for action in ACTIONS]
    out = []
    for sid, action in dict.fromkeys(pairs):
        style = style_sections(spec, category, action)
        out.append((sid, action, style[0] if style else None))
    return out


def level_choice(spec: Spec, category: str, level: dict) -> tuple[str, str]:
    """(cited id, action) of one level of `category` as the skeleton writes it: a level without a section of its
    own is cited by the category's first section, as `choices` does."""
    return level.get("section") or spec.categories[category].sections[0], level["action"]


# The answer after a skeleton CoT: no ids, brackets or tags, and it ends where the model starts writing the skeleton
# again (a small model often does), so that the reply does not talk about the spec.
ANSWER_GRAMMAR = "root ::= [^\\[\\]<>]+\n"
ANSWER_STOPS = [f"\n{head}" for head in (APPLICABLE, REASONING, ACTION, STYLE, ASKS)]


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a GBNF string literal: double quotes, backslash escapes


def skeleton_grammar(spec: Spec, category: str, level: Optional[dict] = None) -> str:
    """The GBNF grammar of a CoT for a prompt of `category`, written after the opening <think> and ending where
    </think> goes (the answer is written freely after it). `level`: one of the category's levels; the CoT must cite
    it and take its action (the level a prompt set gives, when the generator is told it: `generate.level_hint`)."""
    branches = []
    every = choices(spec, category)
    wanted = None if level is None else level_choice(spec, category, level)
    picked = every if wanted is None else [c for c in every if (c[0], c[1]) == wanted]
    if not picked:
        raise ValueError(f"{level.get('name')!r} is not a level of category {category!r} "
                         f"(its levels: {', '.join(lv['name'] for lv in spec.categories[category].levels)})")
    for sid, action, style in picked:
        tail = f"\n{ACTION} {action}\n" + (f"{STYLE} [{style}]\n" if style else "")
        branches.append(f"{_lit(f'{APPLICABLE} [{sid}]' + chr(10) + REASONING + ' ')} text {_lit(tail)}")
    rules = [f"root ::= {_lit(ASKS + ' ')} text {_lit(chr(10))} branch",
             "branch ::= " + " | ".join(f"b{i}" for i in range(len(branches)))]
    rules += [f"b{i} ::= {b}" for i, b in enumerate(branches)]
    rules.append("""text ::= word (" " word)*""")
    rules.append("""word ::= [A-Za-z'(),.;:!?-]+""")
    return "\n".join(rules) + "\n"


def parse_skeleton(cot: str) -> dict:
    """The skeleton's fields read back from a CoT (None where a line is missing): what the gates check."""
    out: dict = {"asks": None, "applicable": None, "reasoning": None, "action": None, "style": None}
    for line in (cot or "").splitlines():
        line = line.strip()
        for key, head in (("asks", ASKS), ("applicable", APPLICABLE), ("reasoning", REASONING),
                          ("action", ACTION), ("style", STYLE)):
            if line.startswith(head) and out[key] is None:
                value = line[len(head):].strip()
                out[key] = value.strip("[]") if key in ("applicable", "style") else value
    return out
