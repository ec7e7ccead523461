"""`delib label`: (prompt, completion) rows labelled with the refusal classifier and the propositions (stage 03's
graders), usable on their own. The labeller of prompts without a category or action is stage 01's
(spec.prompt_labels)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from delib.judging import graders
from delib.run.io import read_jsonl


def read_rows(path: str | Path) -> pd.DataFrame:
    """Rows with `prompt` and `completion`: CSV or JSONL; chat lists (the RBR gold format) are accepted as is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input not found")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        df = pd.DataFrame([row for _, row in read_jsonl(path)])
    elif path.suffix.lower() == ".csv":
        df = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: use a .csv or .jsonl file")
    missing = [c for c in ("prompt", "completion") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def label_rows(df: pd.DataFrame, propositions: bool = False) -> pd.DataFrame:
    """Add `refusal` (full_compliance, full_refusal, partial_refusal), `refusal_cues`, `response_type` (comply,
    refuse, safe_complete, unclear: read from the refusal class, so the two agree), `response_cues`, and with
    `propositions` one boolean column per rule-decided proposition. Rows need no expected action."""
    out = df.copy()
    props = [graders.grade_propositions(p, c) for p, c in zip(df["prompt"], df["completion"].fillna(""))]
    typed = [graders.type_response(p, c, pr) for p, c, pr in zip(df["prompt"], df["completion"].fillna(""), props)]
    out["refusal"] = [t.refusal.label for t in typed]
    out["refusal_cues"] = [", ".join(t.refusal.cues) for t in typed]
    out["response_type"] = [t.action for t in typed]
    out["response_cues"] = [", ".join(t.cues) for t in typed]
    if propositions:
        out = pd.concat([out, pd.DataFrame(props, index=df.index).add_prefix("prop_")], axis=1)
    return out


def write_rows(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        df.to_csv(path, index=False)
    return path


def summary(df: pd.DataFrame) -> Optional[str]:
    counts = {**df["refusal"].value_counts().to_dict(), **df["response_type"].value_counts().to_dict()}
    return ", ".join(f"{k}: {v}" for k, v in counts.items())
