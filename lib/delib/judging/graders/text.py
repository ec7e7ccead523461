"""What the rule-based graders read: a prompt's last user turn, a completion's text, its sentences, cue patterns.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence, Union

# ---------------------------------------------------------------------------------------------------------------
# Inputs: a prompt is text or a chat (list of {"role", "content"}); a completion is text, a message or a list of
# messages (the RBR gold file stores both as chats). Only the last user turn and the assistant text are graded.
# ---------------------------------------------------------------------------------------------------------------
Message = Mapping[str, str]


Chat = Union[str, Message, Sequence[Message], None]


def last_user_message(prompt: Chat) -> str:
    """The text of the request being answered: the prompt itself, or the last user turn of a chat."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return str(prompt.get("content") or "")
    users = [m for m in prompt if m.get("role") == "user"]
    return str((users or list(prompt) or [{}])[-1].get("content") or "")


def completion_text(completion: Chat) -> str:
    """The assistant's answer as text (a list of messages is joined; non-assistant turns are ignored)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    return "\n".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")


# Curly quotes, and their Mac-Roman mojibake seen in published completion files, would break every "can't" pattern.
_CHAR_FIXES = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ", "\u2013": " - ",
               "\u201a\u00c4\u00f4": "'", "\u201a\u00c4\u00f2": "'",
               "\u201a\u00c4\u00fa": '"', "\u201a\u00c4\u00f9": '"',
               "\u201a\u00c4\u00ee": " - ", "\u00a0": " "}


def normalise(text: str) -> str:
    """Straight quotes, no mojibake, single spaces within lines (newlines are kept: they delimit list items)."""
    for bad, good in _CHAR_FIXES.items():
        text = text.replace(bad, good)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().splitlines())


_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022]|[a-h][.)])\s+\S")


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]*]*\s+(?=[\"'(*]*[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """Split into sentences: at line breaks, and after . ! ? before a capital. A bare list marker stays with "
      "its item."""
    out: list[str] = []
    for line in normalise(text).splitlines():
        if not line.strip():
            continue
        parts = _SENTENCE_END.split(line)
        merged: list[str] = []
        for p in parts:
            if merged and re.fullmatch(r"\(?\d{1,2}[.)]|[A-Za-z][.)]|(?:e\.g|i\.e|etc|vs|Dr|Mr|Mrs|Ms|"
                                       r"St)\.", merged[-1]):
                merged[-1] = f"{merged[-1]} {p}"
            else:
                merged.append(p)
        out.extend(s.strip() for s in merged if s.strip())
    return out


def cue(*alternatives: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
