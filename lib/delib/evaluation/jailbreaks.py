"""Stage 06: jailbreak techniques as data (`prompts/benchmarks/jailbreaks.yaml`), each a template the forbidden
prompt goes into, or a transform of it (base64, ROT13) that the template then holds. StrongREJECT's forbidden prompts
are asked under every technique, and goodness@0.1 takes each prompt's worst techniques.
"""
from __future__ import annotations

import base64
import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from delib.run.paths import project_root

TECHNIQUES_FILE = Path("prompts") / "benchmarks" / "jailbreaks.yaml"
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "base64": lambda text: base64.b64encode(text.encode("utf-8")).decode("ascii"),
    "rot13": lambda text: codecs.encode(text, "rot13"),
}


class JailbreakError(ValueError):
    """A techniques file that cannot be used; the message names the file and the technique."""


@dataclass(frozen=True)
class Technique:
    name: str
    template: str                   # holds {prompt}, or {encoded} where a transform is given
    transform: Optional[str] = None  # a key of TRANSFORMS

    def apply(self, prompt: str) -> str:
        """The forbidden prompt as this technique sends it."""
        if self.transform:
            return self.template.replace("{encoded}", TRANSFORMS[self.transform](prompt))
        return self.template.replace("{prompt}", prompt)


def default_path() -> Path:
    return project_root() / TECHNIQUES_FILE


def load_techniques(path: Optional[str | Path] = None) -> list[Technique]:
    """The techniques of a file (default: the shipped one), checked: unique names, a known transform, and the one
    placeholder the technique needs appearing exactly once."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise JailbreakError(f"{path}: jailbreak techniques file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise JailbreakError(f"{path}: not YAML ({err})") from None
    entries = doc.get("techniques") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise JailbreakError(f"{path}: needs a `techniques` list")
    out: list[Technique] = []
    for i, entry in enumerate(entries):
        where = f"{path}: techniques[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not isinstance(entry.get("template"), str):
            raise JailbreakError(f"{where}: each technique needs a name and a template")
        where = f"{path}: technique {entry['name']!r}"
        unknown = set(entry) - {"name", "template", "transform"}
        if unknown:
            raise JailbreakError(f"{where}: unknown key(s) {sorted(unknown)}")
        transform = entry.get("transform")
        if transform is not None and transform not in TRANSFORMS:
            raise JailbreakError(f"{where}: transform {transform!r} is not one of {', '.join(TRANSFORMS)}")
        needed, other = ("{encoded}", "{prompt}") if transform else ("{prompt}", "{encoded}")
        if entry["template"].count(needed) != 1 or other in entry["template"]:
            raise JailbreakError(f"{where}: its template must hold {needed} exactly once (and not {other})")
        if any(t.name == entry["name"] for t in out):
            raise JailbreakError(f"{where}: the name is used twice")
        out.append(Technique(entry["name"], entry["template"], transform))
    return out
