"""Agreement of the deterministic graders (delib.judging.graders) with human labels on the shared development sets.

    python bench/bench_agreement.py [--data ../shared/data]

XSTest completions: the refusal classifier against `final_label`, beside the two string-match baselines.
RBR gold: each rule-decided proposition against the human label, the response type read from propositions, and the
style score computed from our propositions against the one computed from the human propositions.

Each set is split in two halves by a hash of the row (stable, independent of row order and type). The rules were
written and tuned looking at half 0 only; half 1 is the check on data we did not study.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

import pandas as pd

from delib.judging import graders

ROOT = Path(__file__).resolve().parents[1]
# The RBR file calls judgemental "judgement", and has no empty-response label of its own.
RBR_NAMES = {"judgemental": "judgement"}


def half(key: str) -> int:
    """0 (tuning half) or 1 (held-out half), from a hash of the row's key."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2


# --------------------------------------------------------------------------------------------------------------
# XSTest
# --------------------------------------------------------------------------------------------------------------
def xstest_table(data: Path) -> pd.DataFrame:
    df = pd.read_csv(data / "xstest" / "dev_completions_mistralinstruct_labelled.csv")
    df["gold"] = df["final_label"].map(graders.XSTEST_LABELS)
    df["half"] = [half(str(i)) for i in df["id"]]
    verdicts = [graders.classify_refusal(p, c) for p, c in zip(df["prompt"], df["completion"])]
    df["rules"] = [v.label for v in verdicts]
    df["cues"] = [", ".join(v.cues) for v in verdicts]
    df["strmatch_prefix"] = [graders.strmatch_refusal(c) for c in df["completion"]]
    df["strmatch_keyword"] = [graders.keyword_refusal(c) for c in df["completion"]]
    return df


def refusal_scores(gold: pd.Series, pred: pd.Series) -> dict[str, float]:
    binary = (gold != "full_compliance") == (pred != "full_compliance")
    return {"3-way acc": (gold == pred).mean(), "binary acc": binary.mean(), "n": len(gold)}


def report_xstest(df: pd.DataFrame) -> None:
    print("== XSTest development completions (Mistral-7B-Instruct, 450 rows; refusal = full or partial refusal)")
    rows = []
    for clf in ("rules", "strmatch_prefix", "strmatch_keyword"):
        for name, part in (("all", df), ("half 0 (tuned on)", df[df.half == 0]),
                           ("half 1 (held out)", df[df.half == 1]), ("annotators agreed", df[df.agreement])):
            rows.append({"classifier": clf, "rows": name, **refusal_scores(part["gold"], part[clf])})
    table = pd.DataFrame(rows)
    table["n"] = table["n"].astype(int)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for clf in ("rules", "strmatch_prefix"):
        print(f"\nconfusion matrix, {clf} (rows: human label, columns: predicted), all rows")
        print(pd.crosstab(df["gold"], df[clf]).reindex(index=graders.REFUSAL_LABELS, columns=graders.REFUSAL_LABELS,
                                                         fill_value=0).to_string())
    binary = (df["gold"] != "full_compliance")
    wrong = df[binary != (df["rules"] != "full_compliance")]
    print(f"\nbinary errors of the rules by XSTest type (all rows): "
          + ", ".join(f"{t} {n}" for t, n in wrong["type"].value_counts().items()))


# --------------------------------------------------------------------------------------------------------------
# RBR gold
# --------------------------------------------------------------------------------------------------------------
def rbr_rows(data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (data / "rbr" / "rbr_gold_train.jsonl").read_text().splitlines() if line]
    for r in rows:
        r["half"] = half(json.dumps(r["prompt"], sort_keys=True) + json.dumps(r["completion"], sort_keys=True))
        r["action"] = graders.RBR_RESPONSE_TYPES[r["response_type"]]
        # Every safe completion in this file is about self-harm (categories SH-R1, SH-R2).
        r["category"] = "self_harm" if r["action"] == "safe_complete" else None
        r["ours"] = graders.grade_propositions(r["prompt"], r["completion"])
        r["gold"] = {name: r["propositions"][RBR_NAMES.get(name, name)]
                     for name in graders.PROPOSITIONS if RBR_NAMES.get(name, name) in r["propositions"]}
    return rows


def binary_scores(pairs: list[tuple[bool, bool]]) -> dict[str, float]:
    """Accuracy, precision, recall of predictions against gold, and the accuracy of always answering the majority."""
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    n = len(pairs)
    pos = tp + fn
    return {"n": n, "pos": pos, "majority": max(pos, n - pos) / n if n else float("nan"),
            "acc": (n - fp - fn) / n if n else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / pos if pos else float("nan")}


def applies(name: str, r: dict) -> bool:
    """Whether the style for the row's expected action uses this proposition."""
    return name in graders.style_for(r["action"], r["category"])


def report_rbr(rows: list[dict]) -> None:
    print("\n== RBR gold (351 human-labelled responses): rule-decided propositions against the human label")
    print("columns: all rows | held-out half | rows whose expected action's style uses the proposition")
    table = []
    for name in graders.PROPOSITIONS:
        if not all(name in r["gold"] for r in rows):
            continue
        pairs = [(r["ours"][name], r["gold"][name]) for r in rows]
        s = binary_scores(pairs)
        held = binary_scores([(r["ours"][name], r["gold"][name]) for r in rows if r["half"] == 1])
        used = binary_scores([(r["ours"][name], r["gold"][name]) for r in rows if applies(name, r)])
        table.append({"proposition": name, "pos": s["pos"], "majority": s["majority"], "acc": s["acc"],
                      "precision": s["precision"], "recall": s["recall"], "acc held-out": held["acc"],
                      "maj held-out": held["majority"], "n used": used["n"], "acc used": used["acc"],
                      "maj used": used["majority"]})
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    empty = binary_scores([(r["ours"]["empty_response"], r["propositions"]["illogical_continuation_of_prompt"])
                           for r in rows])
    print(f"empty_response against illogical_continuation_of_prompt (a rule sees only the empty case): "
          f"precision {empty['precision']:.3f}, recall {empty['recall']:.3f} ({empty['pos']} illogical)")
    print("left to an LLM grader (graders.LLM_ONLY): " + ", ".join(graders.LLM_ONLY))

    print("\n== Response type (what the response did) against the file's response_type (what the prompt called for)")
    print("The file's completions are often deliberately wrong for their prompt, so even the human propositions")
    print("cannot reach 1.0: the first column is that ceiling, the second is ours, the third our agreement with it.")
    out = []
    for name, part in (("all", rows), ("half 1 (held out)", [r for r in rows if r["half"] == 1])):
        gold_type = [graders.response_type(r["gold"] | {"disallowed_content": r["propositions"]["disallowed_content"],
                                                      "partially_complies": r["propositions"]["partially_complies"]})
                     for r in part]
        our_type = [graders.response_type(r["ours"]) for r in part]
        want = [r["action"] for r in part]
        out.append({"rows": name, "n": len(part),
                    "human props vs file": sum(g == w for g, w in zip(gold_type, want)) / len(part),
                    "our props vs file": sum(o == w for o, w in zip(our_type, want)) / len(part),
                    "ours vs human props": sum(o == g for o, g in zip(our_type, gold_type)) / len(part)})
    print(pd.DataFrame(out).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("confusion, our propositions (rows: file's response type, columns: read from our propositions)")
    print(pd.crosstab(pd.Series([r["action"] for r in rows], name="file"),
                      pd.Series([graders.response_type(r["ours"]) for r in rows], name="ours")).to_string())

    print("\n== Style score for the expected action: from our propositions vs from the human propositions")
    print("(gates left out: disallowed_content and illogical continuation need an LLM; the same keys on both sides)")
    out = []
    for action in graders.STYLE:
        part = [r for r in rows if r["action"] == action]
        ours, gold = [], []
        for r in part:
            keys = [k for k in graders.style_for(action, r["category"]) if k in r["gold"]]
            ours.append(graders.style_score(action, {k: r["ours"][k] for k in keys}, r["category"]))
            gold.append(graders.style_score(action, {k: r["gold"][k] for k in keys}, r["category"]))
        out.append({"action": action, "n": len(part), "mean (human)": statistics.mean(gold),
                    "mean (ours)": statistics.mean(ours),
                    "mean abs diff": statistics.mean(abs(a - b) for a, b in zip(ours, gold)),
                    "pearson r": statistics.correlation(ours, gold)})
    print(pd.DataFrame(out).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="the shared data folder (default: ../shared/data from the project root)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"no data folder at {args.data} (pass --data)")
    pd.set_option("display.width", 200)
    report_xstest(xstest_table(args.data))
    report_rbr(rbr_rows(args.data))


if __name__ == "__main__":
    main()
