"""Stage 01 (policy): category-labelled prompt sets, from CSV or JSONL, and the XSTest benchmark.

Every prompt carries a category (so the generator can be shown `spec_for_category`). Optional: the level of its
category that applies (`level`: the level's name or its section id in the spec's mapping), which citation accuracy
is measured against, stage 03's `applicable_level` gate checks, and `generate.level_hint` tells the generator; the
expected action (comply, refuse, safe_complete, or the spec's own word for one), which the level's action fills
when absent; and the split (train; dev, held out and tuned on; test, locked), which a seeded split stratified
by category and action fills with train and dev when absent (`prompts.dev_share`; a file's "eval", the former
name, reads as dev). Where each came from is kept (`action_source`,
`split_source`). Errors name the file and line.
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from delib.spec.document import ACTIONS, Spec
from delib.run.io import read_jsonl, sha256_file

REQUIRED = ("id", "prompt")
COLUMNS = (*REQUIRED, "category", "expected_action", "split")
OPTIONAL = ("level",)  # may be absent, or empty on some rows
SOURCES = ("category_source", "action_source", "split_source")  # "file", or where the value came from ("level",
# "model", "seeded", "params")
SPLITS = ("train", "dev", "test")  # dev: held out, tuned on freely; test: locked, evaluated once (evaluate.split)
SPLIT_ALIASES = {"eval": "dev"}  # the held-out split's former name, still read
XSTEST_FILE = Path("prompts") / "benchmarks" / "xstest" / "xstest_prompts.csv"  # shipped (CC-BY-4.0)
XSTEST_SHA256 = "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"


class PromptSetError(ValueError):
    """A prompt set that cannot be used; the message starts with `file:line:`."""


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs from a CSV (header on line 1) or JSONL file."""
    if not path.is_file():
        raise PromptSetError(f"{path}: prompt set not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path, PromptSetError)
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            return [(reader.line_num, row) for row in reader]
    raise PromptSetError(f"{path}: unknown prompt set format {suffix!r}; use .csv, .tsv or .jsonl")


def load_prompt_set(path: str | Path, columns: Optional[dict[str, str]] = None, split: Optional[str] = None,
                    spec: Optional[Spec] = None, labels_missing_ok: bool = False) -> pd.DataFrame:
    """Load one prompt set as a DataFrame with columns id, prompt, category, expected_action, split, level, source,
    action_source, split_source. A row without a split has split None (load_prompt_sets splits them).

    `columns` maps our column names to the file's (e.g. {"prompt": "question"}); `split` forces one split;
    with `spec`, every category must be one of the spec's, and actions may be the spec's own words. With
    `labels_missing_ok`, a row may lack its category, or both its expected action and level (a labeller fills
    them: spec.prompt_labels); `line` keeps each row's line for the errors that come later.
    """
    path = Path(path)
    columns = columns or {}
    unknown = set(columns) - set(COLUMNS) - set(OPTIONAL)
    if unknown:
        raise PromptSetError(f"{path}: columns mapping names unknown column(s) {sorted(unknown)}; "
                             f"ours are {list(COLUMNS + OPTIONAL)}")
    out, seen = [], {}
    for lineno, row in _read_rows(path):
        rec = {col: _value(row, columns.get(col, col)) for col in COLUMNS}
        for col in REQUIRED + (() if labels_missing_ok else ("category",)):
            if rec[col] is None:
                src = columns.get(col, col)
                raise PromptSetError(f"{path}:{lineno}: missing value for column {src!r}"
                                     + (f" (our {col!r})" if src != col else ""))
        rec["split_source"] = "params" if split else "file" if rec["split"] else None  # params: prompts.sets[].split
        rec["split"] = split or SPLIT_ALIASES.get(rec["split"], rec["split"])
        if rec["split"] is not None and rec["split"] not in SPLITS:
            raise PromptSetError(f"{path}:{lineno}: split {rec['split']!r} is not one of {', '.join(SPLITS)}")
        rec["category_source"] = "file" if rec["category"] is not None else None
        if spec is not None and rec["category"] is not None and rec["category"] not in spec.categories:
            raise PromptSetError(f"{path}:{lineno}: category {rec['category']!r} is not in the spec "
                                 f"{spec.source} (categories: {', '.join(spec.categories)})")
        if rec["expected_action"] is not None:
            said = rec["expected_action"]
            rec["expected_action"] = spec.action(said) if spec is not None else (said if said in ACTIONS else None)
            if rec["expected_action"] is None:
                words = [*ACTIONS, *(spec.actions if spec is not None else ())]
                raise PromptSetError(f"{path}:{lineno}: expected_action {said!r} is not one of {', '.join(words)}")
            rec["action_source"] = "file"
        level = _value(row, columns.get("level", "level"))
        if level and rec["category"] is None:
            raise PromptSetError(f"{path}:{lineno}: level {level!r} without a category: give the category too")
        rec["level"] = _level_name(path, lineno, level, rec, spec) if level else None
        if rec["expected_action"] is None:
            found = spec.level(rec["category"], rec["level"]) if spec is not None else None
            if found is None and labels_missing_ok:
                rec["action_source"] = None
            elif found is None:
                raise PromptSetError(f"{path}:{lineno}: no expected_action and no level of the spec to take it "
                                     f"from: give either (column {columns.get('expected_action', 'expected_action')!r} "
                                     f"or {columns.get('level', 'level')!r})")
            else:
                rec["expected_action"], rec["action_source"] = found["action"], "level"
        if rec["id"] in seen:
            raise PromptSetError(f"{path}:{lineno}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
        seen[rec["id"]] = lineno
        rec["source"], rec["line"] = str(path), lineno
        out.append(rec)
    if not out:
        raise PromptSetError(f"{path}: the prompt set has no rows")
    return pd.DataFrame(out, columns=[*COLUMNS, *OPTIONAL, "source", "line", *SOURCES])


def _value(row: dict, column: str) -> Optional[str]:
    value = row.get(column)
    return None if value is None or not str(value).strip() else str(value).strip()


def _level_name(path: Path, lineno: int, level: str, rec: dict, spec: Optional[Spec]) -> str:
    """A row's `level` as the level's name; with the spec, it must be a level of the row's category (by name or
    section id) whose action is the row's expected action."""
    if spec is None or rec["category"] not in spec.categories:
        return level
    found = spec.level(rec["category"], level)
    if found is None:
        levels = spec.categories[rec["category"]].levels
        names = ", ".join(lv["name"] for lv in levels) or "none: the mapping gives this category no levels"
        raise PromptSetError(f"{path}:{lineno}: level {level!r} is not a level of category {rec['category']!r} "
                             f"(its levels: {names})")
    if rec["expected_action"] is not None and found["action"] != rec["expected_action"]:
        raise PromptSetError(f"{path}:{lineno}: level {found['name']} of {rec['category']!r} says "
                             f"{found['action']}, but expected_action is {rec['expected_action']}")
    return found["name"]


def load_prompt_sets(sets: Iterable, spec: Optional[Spec] = None, resolve=Path, seed: int = 0,
                     dev_share: float = 0.5, labeller: Optional[Callable[[pd.DataFrame], pd.DataFrame]] = None
                     ) -> pd.DataFrame:
    """Several prompt sets (params `prompts.sets`) into one table; ids must stay unique across them. Rows that
    lack labels go to `labeller` (spec.prompt_labels) when there is one, else are refused with file and line; rows
    without a split then get one from `seeded_split`."""
    frames = [load_prompt_set(resolve(s.path), s.columns, s.split, spec, labels_missing_ok=labeller is not None)
              for s in sets]
    df = pd.concat(frames, ignore_index=True)
    dup = df[df["id"].duplicated()]
    if not dup.empty:
        row = dup.iloc[0]
        first = df[df["id"] == row["id"]].iloc[0]
        raise PromptSetError(f"{row['source']}:{row['line']}: id {row['id']!r} is also used by another prompt set "
                             f"({first['source']}:{first['line']})")
    if labeller is not None and needs_labels(df).any():
        df = labeller(df)
    missing = needs_labels(df)
    if missing.any():
        row = df[missing].iloc[0]
        what = "category" if not isinstance(row["category"], str) else "expected action or level"
        error = row.get("labeller_error")
        raise PromptSetError(f"{row['source']}:{row['line']}: prompt {row['id']!r} has no {what}, and the labeller "
                             f"(models.judge) gave none" + (f" ({error})" if isinstance(error, str) else "")
                             + f"; {int(missing.sum())} prompt(s) lack one: label them in the file")
    return seeded_split(df, seed, dev_share)


def needs_labels(prompts: pd.DataFrame) -> pd.Series:
    """Rows without a category, or without both an expected action and a level."""
    return prompts["category"].isna() | (prompts["expected_action"].isna() & prompts["level"].isna())


def seeded_split(prompts: pd.DataFrame, seed: int, dev_share: float) -> pd.DataFrame:
    """Rows whose split is None, split into train and dev, stratified by (category, expected action): within
    each group the rows are ordered by a hash of (seed, id), and dev takes round(dev_share x n) of them (halves
    up), but never all nor none of a group of two or more while 0 < dev_share < 1, so that both splits see every
    (category, action) they can. The same seed and ids give the same split on any machine, whatever the file's
    order."""
    todo = prompts["split"].isna()
    if not todo.any():
        return prompts
    out = prompts.copy()
    for _, group in out[todo].groupby(["category", "expected_action"], sort=True):
        order = sorted(group.index, key=lambda i: hashlib.sha256(f"{seed}:{out.at[i, 'id']}".encode()).hexdigest())
        n_dev = math.floor(dev_share * len(order) + 0.5)
        if len(order) >= 2 and 0 < dev_share < 1:
            n_dev = min(max(n_dev, 1), len(order) - 1)
        for k, i in enumerate(order):
            out.at[i, "split"] = "dev" if k < n_dev else "train"
    out.loc[todo, "split_source"] = "seeded"
    return out


def load_xstest(path: Optional[str | Path] = None) -> pd.DataFrame:
    """XSTest (Röttger et al., 2024): 250 safe prompts (comply) and 200 `contrast_*` unsafe ones (refuse), from
    `path` (default: the copy shipped in prompts/benchmarks/xstest, checked by its hash and counts). Category is left
    empty: XSTest's types are not our categories."""
    from delib.run.paths import project_root

    path = Path(path) if path else project_root() / XSTEST_FILE
    rows = _read_rows(path)
    out = []
    for lineno, row in rows:
        missing = [c for c in ("id", "prompt", "type") if not row.get(c)]
        if missing:
            raise PromptSetError(f"{path}:{lineno}: XSTest row lacks {missing}")
        unsafe = row["type"].startswith("contrast_")
        out.append({"id": f"xstest-{row['id']}", "prompt": row["prompt"].strip(), "category": None,
                    "expected_action": "refuse" if unsafe else "comply", "split": "dev",
                    "source": str(path), "xstest_type": row["type"]})
    check_shipped(path, {XSTEST_FILE: (XSTEST_SHA256, 450)}, len(out), "XSTest")  # 250 safe, 200 contrast
    return pd.DataFrame(out)


def check_shipped(path: Path, shipped: dict[Path, tuple[str, int]], rows: int, what: str) -> None:
    """A benchmark file the project ships (a key of `shipped`, relative to the project root, with its sha256 and
    count of prompts) must be the one it ships; any other file is the user's own, and passes."""
    from delib.run.paths import project_root

    for name, (digest, count) in shipped.items():
        if path.resolve() == (project_root() / name).resolve() and (sha256_file(path) != digest or rows != count):
            raise PromptSetError(f"{path}: not the {what} file the project ships ({rows} prompts, sha256 "
                                 f"{sha256_file(path)[:12]}...; expected {count}, {digest[:12]}...): restore it "
                                 "with git, or name your own file")


_WORD = re.compile(r"[a-z0-9']+")


def _shingles(text: str, n: int = 3) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def near_duplicates(train: pd.DataFrame, eval_: pd.DataFrame, word_jaccard: float = 0.6,
                    shingle_jaccard: float = 0.3) -> pd.DataFrame:
    """Pairs (train id, eval id) whose prompts are the same or near-copies: high word overlap or shared phrases."""
    pairs = []
    train_feats = [(r.id, r.prompt, _words(r.prompt), _shingles(r.prompt)) for r in train.itertuples()]
    for e in eval_.itertuples():
        ew, es = _words(e.prompt), _shingles(e.prompt)
        for tid, tprompt, tw, ts in train_feats:
            wj = len(ew & tw) / max(1, len(ew | tw))
            sj = len(es & ts) / max(1, len(es | ts))
            if wj >= word_jaccard or sj >= shingle_jaccard:
                pairs.append({"train_id": tid, "eval_id": e.id, "word_jaccard": round(wj, 3),
                              "shingle_jaccard": round(sj, 3), "train_prompt": tprompt, "eval_prompt": e.prompt})
    return pd.DataFrame(pairs, columns=["train_id", "eval_id", "word_jaccard", "shingle_jaccard",
                                        "train_prompt", "eval_prompt"])
