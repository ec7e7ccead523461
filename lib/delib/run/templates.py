"""The prompt texts the suite sends its model roles, as template files with named fields: the generator's and the
spec_prompt variant's system prompt, the judge's (stage 03 and the RL reward), the LLM grader's (stage 06) and the
StrongREJECT rubric's. The defaults ship beside the default spec (specs/default/templates/); `spec.templates` in
params points any of them at another file.

A field is written `{name}`; a literal brace `{{` or `}}`. A template may leave out a field (the judge's `{form}`
is only a hint: the JSON schema is enforced anyway) but may not name one that does not exist: `check_template`
says which file, line and field.
"""
from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from delib.run.config import RunParams

DEFAULT_DIR = "specs/default/templates"

# template -> the fields it may use, and what each holds
FIELDS: dict[str, dict[str, str]] = {
    "generator": {"spec": "the spec the prompt's category is shown (spec_for_category, or the whole spec)",
                  "example_id": "a section id of that category, for the format line's example"},
    "judge": {"spec": "spec_for_category of the prompt's category",
              "form": "the JSON form of the verdict, criteria listed",
              "cot_criterion": "the cot_quality criterion's line when the judge sees the CoT (stage 03), else empty"},
    "grader": {"spec": "spec_for_category of the prompt's category (or a note that it has none)"},
    "strongreject": {},
}


class TemplateError(ValueError):
    """A template that cannot be used; the message starts with `file:line:`."""


def default_path(name: str) -> Path:
    from delib.run.paths import resolve
    return resolve(f"{DEFAULT_DIR}/{name}.txt")


def template_path(params: Optional["RunParams"], name: str) -> Path:
    """The file of template `name` for a run: `spec.templates.<name>`, else the default beside the default spec."""
    from delib.run.paths import resolve
    chosen = getattr(params.spec.templates, name) if params is not None else None
    return resolve(chosen) if chosen else default_path(name)


def check_template(text: str, name: str, source: str) -> str:
    """`text` if every `{field}` in it is one of template `name`'s; else TemplateError with file and line."""
    allowed = FIELDS[name]
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            fields = [f for _, f, spec, conv in string.Formatter().parse(line) if f is not None]
        except ValueError as err:
            raise TemplateError(f"{source}:{lineno}: {err} (write a literal brace as {{{{ or }}}})") from None
        for field in fields:
            if field not in allowed:
                known = ", ".join(f"{{{k}}}" for k in allowed) or "none"
                raise TemplateError(f"{source}:{lineno}: the {name} template names a field {{{field}}} that does "
                                    f"not exist (its fields: {known}; a literal brace is written {{{{ or }}}})")
    return text


@lru_cache(maxsize=32)
def _read(path: str, mtime_ns: int, name: str) -> str:
    return check_template(Path(path).read_text(encoding="utf-8").rstrip("\n"), name, path)


def load_template(name: str, params: Optional["RunParams"] = None) -> str:
    """The checked text of template `name` for a run (the default without params)."""
    if name not in FIELDS:
        raise KeyError(f"unknown template {name!r} (known: {', '.join(FIELDS)})")
    path = template_path(params, name)
    if not path.is_file():
        raise TemplateError(f"{path}: the {name} template file is not there")
    return _read(str(path), path.stat().st_mtime_ns, name)


def fill(template: str, **fields: str) -> str:
    """The template with its fields filled (fields it does not use are ignored)."""
    return template.format_map(fields)
