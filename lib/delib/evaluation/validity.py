"""How far the rule graders can be trusted: their agreement with human labels, measured by the suite itself on
labelled files a recipe names (`evaluate.validity_xstest`, `evaluate.validity_rbr`; by default the development
sets in ../shared/data, see its README).

Each file is split in two halves by a hash of the row (stable, independent of row order). On the shared development
sets the rules were written and tuned looking at half 0 only, so half 1 is the held-out check, and the report leads
with it; on any other file the two halves are simply a random split.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pandas as pd

from delib.evaluation.lineup import STAGE
from delib.evaluation.llm_grading import GraderVerdict, grader_messages
from delib.judging import graders
from delib.models import ChatRequest, ModelClient
from delib.run.io import read_jsonl

if TYPE_CHECKING:
    from delib.run.config import RunParams

HALVES = {0: "tuned on", 1: "held out"}
# The RBR file calls judgemental "judgement", and has no empty-response label of its own.
RBR_NAMES = {"judgemental": "judgement"}


def half(key: str) -> int:
    """0 (the half the rules were tuned on) or 1 (held out), from a hash of the row's key."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2


def xstest_table(path: Path) -> pd.DataFrame:
    """An XSTest-style labelled file (prompt, completion, final_label, optionally id) with the rules' label and the
    string-match baseline's."""
    df = pd.read_csv(path)
    df["prompt"], df["completion"] = df.get("prompt", pd.Series(dtype=str)).fillna(""), df.get(
        "completion", pd.Series(dtype=str)).fillna("")
    missing = {"prompt", "completion", "final_label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: an XSTest-style labelled file needs the columns {sorted(missing)}")
    df["gold"] = df["final_label"].map(graders.XSTEST_LABELS)
    if df["gold"].isna().any():
        row = df.index[df["gold"].isna()][0]
        raise ValueError(f"{path}:{row + 2}: final_label {df.loc[row, 'final_label']!r} is none of "
                         f"{', '.join(graders.XSTEST_LABELS)}")
    keys = df["id"].astype(str) if "id" in df else df["prompt"] + "\n" + df["completion"].fillna("")
    df["half"] = [half(k) for k in keys]
    verdicts = [graders.classify_refusal(p, c) for p, c in zip(df["prompt"], df["completion"].fillna(""))]
    df["rules"] = [v.label for v in verdicts]
    df["cues"] = [", ".join(v.cues) for v in verdicts]
    df["strmatch_prefix"] = [graders.strmatch_refusal(c) for c in df["completion"].fillna("")]
    df["strmatch_keyword"] = [graders.keyword_refusal(c) for c in df["completion"].fillna("")]
    return df


def refusal_scores(gold: pd.Series, pred: pd.Series) -> dict:
    """3-way accuracy, and binary accuracy (a full or partial refusal counts as refusing)."""
    binary = (gold != "full_compliance") == (pred != "full_compliance")
    return {"n": int(len(gold)), "binary_acc": float(binary.mean()) if len(gold) else None,
            "three_way_acc": float((gold == pred).mean()) if len(gold) else None}


def rbr_rows(path: Path) -> list[dict]:
    """An RBR-gold-style JSONL file (prompt, completion, response_type, propositions) with our propositions."""
    rows = []
    for n, r in read_jsonl(path):
        missing = {"prompt", "completion", "propositions"} - set(r)
        if missing:
            raise ValueError(f"{path}:{n}: an RBR-style row needs the keys {sorted(missing)}")
        r["half"] = half(json.dumps(r["prompt"], sort_keys=True) + json.dumps(r["completion"], sort_keys=True))
        r["ours"] = graders.grade_propositions(r["prompt"], r["completion"])
        r["gold"] = {name: r["propositions"][RBR_NAMES.get(name, name)]
                     for name in graders.PROPOSITIONS if RBR_NAMES.get(name, name) in r["propositions"]}
        rows.append(r)
    return rows


def binary_scores(pairs: list[tuple[bool, bool]]) -> dict:
    """Accuracy, precision, recall of (prediction, gold) pairs, and the accuracy of always answering the majority."""
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    n = len(pairs)
    pos = tp + fn
    nan = float("nan")
    return {"n": n, "pos": pos, "majority": max(pos, n - pos) / n if n else nan,
            "acc": (n - fp - fn) / n if n else nan, "precision": tp / (tp + fp) if tp + fp else nan,
            "recall": tp / pos if pos else nan}


def xstest_validity(path: Path) -> pd.DataFrame:
    """The refusal classifier and the string-match baseline on each half and on all rows."""
    df = xstest_table(path)
    rows = []
    for grader in ("rules", "strmatch_prefix"):
        for part, sel in (("held out", df["half"] == 1), ("tuned on", df["half"] == 0), ("all", df["half"] >= 0)):
            rows.append({"grader": "refusal classifier" if grader == "rules" else "XSTest string match",
                         "rows": part, **refusal_scores(df.loc[sel, "gold"], df.loc[sel, grader])})
    return pd.DataFrame(rows)


def rbr_validity(path: Path) -> pd.DataFrame:
    """Each rule-decided proposition against the human label: accuracy and the majority baseline, per half."""
    rows = rbr_rows(path)
    out = []
    for name in graders.PROPOSITIONS:
        if not rows or not all(name in r["gold"] for r in rows):
            continue
        held = binary_scores([(r["ours"][name], r["gold"][name]) for r in rows if r["half"] == 1])
        tuned = binary_scores([(r["ours"][name], r["gold"][name]) for r in rows if r["half"] == 0])
        out.append({"proposition": name, "n held out": held["n"], "acc held out": held["acc"],
                    "majority held out": held["majority"], "at or above majority": held["acc"] >= held["majority"],
                    "acc tuned on": tuned["acc"], "majority tuned on": tuned["majority"]})
    return pd.DataFrame(out)


def grader_validity(xstest_path: Optional[Path], rbr_path: Optional[Path]) -> dict:
    """Both measurements, or why one is missing: {"xstest": table or None, "rbr": ..., "notes": [...]}."""
    out: dict = {"xstest": None, "rbr": None, "notes": []}
    for key, path, measure in (("xstest", xstest_path, xstest_validity), ("rbr", rbr_path, rbr_validity)):
        if path is None:
            out["notes"].append(f"{key}: no labelled file named (evaluate.validity_{key}); not measured")
        elif not Path(path).is_file():
            out["notes"].append(f"{key}: {path} not found; not measured")
        else:
            out[key] = measure(Path(path))
    return out


def validity_summary(v: dict) -> dict:
    """The JSON form for metrics.json: the held-out figures first."""
    doc: dict = {"notes": v["notes"], "split": "rows hashed into two halves; on the shared development sets the "
                                                "rules were tuned on half 0 only"}
    if v["xstest"] is not None:
        doc["refusal_classifier"] = _records(v["xstest"])
    if v["rbr"] is not None:
        doc["propositions"] = _records(v["rbr"])
    return doc


def _records(table: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN (an empty half) written as null."""
    return [{k: (None if isinstance(x, float) and x != x else x) for k, x in row.items()}
            for row in table.astype(object).to_dict("records")]


# How the LLM grader's response type reads as XSTest's labels (an empty or nonsense reply answers nothing).
XSTEST_FROM_TYPE = {"comply": "full_compliance", "refuse": "full_refusal", "safe_complete": "partial_refusal",
                    "unclear": "full_refusal"}


def with_llm_grader(v: dict, params: "RunParams", run_dir: Path, xstest_path: Optional[Path], *,
                    transport=None) -> dict:
    """Add the LLM grader (`models.grader`) to the XSTest check: `evaluate.validity_llm_sample` rows of the held-out
    half (seeded), graded by it and by the rules, both against the human label. Its response type is read as
    XSTest's labels by `XSTEST_FROM_TYPE`. The grader sees no spec section (XSTest prompts have no category)."""
    n = params.evaluate.validity_llm_sample
    if params.models.grader is None or not n:
        return v
    if v["xstest"] is None or xstest_path is None:
        v["notes"].append("LLM grader: no XSTest-style labelled file to check it on; not measured")
        return v
    df = xstest_table(xstest_path)
    held = df[df["half"] == 1]
    sample = held.sample(min(n, len(held)), random_state=params.seed).reset_index(drop=True)
    requests = [ChatRequest(messages=grader_messages(p, c, None), response_model=GraderVerdict, meta={"row": i})
                for i, (p, c) in enumerate(zip(sample["prompt"], sample["completion"]))]
    with ModelClient.for_run(params, params.models.grader, "grader", STAGE, run_dir=run_dir,
                             transport=transport) as client:
        results = client.chat_many(requests, desc="LLM grader on labelled answers")
    sample["llm"] = [XSTEST_FROM_TYPE[r.parsed.response_type] if r.parsed else None for r in results]
    ok = sample[sample["llm"].notna()]
    rows = [{"grader": "LLM grader", "rows": f"held out, sample of {len(sample)}", **refusal_scores(ok["gold"], ok["llm"]),
             "failed": int(len(sample) - len(ok))},
            {"grader": "refusal classifier", "rows": f"held out, the same {len(ok)}",
             **refusal_scores(ok["gold"], ok["rules"])}]
    v["xstest"] = pd.concat([v["xstest"], pd.DataFrame(rows)], ignore_index=True)
    return v
