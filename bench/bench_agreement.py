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
import statistics
from pathlib import Path

import pandas as pd

from delib.evaluation import validity
from delib.evaluation.validity import binary_scores
from delib.judging import graders
from delib.spec.document import load_spec

ROOT = Path(__file__).resolve().parents[1]
# The default spec's own style checks (category -> action -> {proposition: [wanted, weight]}), as a run grades with.
CHECKS = load_spec(ROOT / "specs" / "default" / "spec.md").checks_by_category()


def style_for(r: dict) -> dict:
    return graders.style_for(r["action"], graders.spec_checks(CHECKS, r["category"], r["action"]))
# --------------------------------------------------------------------------------------------------------------
# XSTest
# --------------------------------------------------------------------------------------------------------------
def xstest_table(data: Path) -> pd.DataFrame:
    return validity.xstest_table(data / "xstest" / "dev_completions_mistralinstruct_labelled.csv")


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
    print("\nbinary errors of the rules by XSTest type (all rows): "
          + ", ".join(f"{t} {n}" for t, n in wrong["type"].value_counts().items()))


# --------------------------------------------------------------------------------------------------------------
# RBR gold
# --------------------------------------------------------------------------------------------------------------
def rbr_rows(data: Path) -> list[dict]:
    rows = validity.rbr_rows(data / "rbr" / "rbr_gold_train.jsonl")
    for r in rows:
        r["action"] = graders.RBR_RESPONSE_TYPES[r["response_type"]]
        # Every safe completion in this file is about self-harm (categories SH-R1, SH-R2).
        r["category"] = "self_harm" if r["action"] == "safe_complete" else None
    return rows


def applies(name: str, r: dict) -> bool:
    """Whether the style for the row's expected action uses this proposition."""
    return name in style_for(r)


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

    print("\n== Response type (what the response did: graders.type_response) against the file's response_type (what")
    print("the prompt called for). The file's completions are often deliberately wrong for their prompt, so this is a")
    print("description, not an accuracy.")
    print(pd.crosstab(pd.Series([r["action"] for r in rows], name="file"),
                      pd.Series([graders.type_response(r["prompt"], r["completion"], r["ours"]).action for r in rows],
                                name="ours")).to_string())

    print("\n== Style score for the expected action: from our propositions vs from the human propositions")
    print("(gates left out: disallowed_content and illogical continuation need an LLM; the same keys on both sides)")
    out = []
    for action in graders.STYLE:
        part = [r for r in rows if r["action"] == action]
        ours, gold = [], []
        for r in part:
            checks = graders.spec_checks(CHECKS, r["category"], action)
            keys = [k for k in graders.style_for(action, checks) if k in r["gold"]]
            ours.append(graders.style_score(action, {k: r["ours"][k] for k in keys}, checks))
            gold.append(graders.style_score(action, {k: r["gold"][k] for k in keys}, checks))
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
