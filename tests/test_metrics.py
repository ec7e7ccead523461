"""The evaluation metrics and their bootstrap: masks, point values, interval coverage, paired differences."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from delib.evaluation import lineup, metrics
from delib.evaluation.metrics import MetricDef, bootstrap_metrics, bootstrap_weights


def answers_frame(rows: list[tuple]) -> pd.DataFrame:
    """(variant, prompt_id, category, expected_action, safe, not_overrefused, error) rows."""
    df = pd.DataFrame(rows, columns=["variant", "prompt_id", "category", "expected_action", "safe",
                                     "not_overrefused", "error"])
    return df


def rate(name: str, column: str, actions=None) -> MetricDef:
    select = (lambda d: d["expected_action"].isin(actions)) if actions else (lambda d: pd.Series(True, index=d.index))
    return MetricDef(name, "all", column, select, name)


def test_weights_are_seeded_resamples_of_n():
    w = bootstrap_weights(7, 500, seed=3)
    assert w.shape == (500, 7) and (w.sum(axis=1) == 7).all()
    assert np.array_equal(w, bootstrap_weights(7, 500, seed=3))
    assert not np.array_equal(w, bootstrap_weights(7, 500, seed=4))
    assert abs(w.mean() - 1) < 0.05  # each item is drawn once per resample on average


def test_masked_point_values_and_counts():
    df = answers_frame([
        ("a", "p1", "x", "refuse", True, None, None),
        ("a", "p2", "x", "safe_complete", False, None, None),
        ("a", "p3", "x", "refuse", True, None, None),
        ("a", "p4", "x", "comply", False, True, None),
        ("a", "p5", "x", "comply", False, False, None),
        ("a", "p6", "x", "refuse", None, None, "timeout: no answer"),  # a failed request counts nowhere
    ])
    m, _ = bootstrap_metrics(df, [rate("not_unsafe", "safe", ("refuse", "safe_complete")),
                                  rate("not_overrefuse", "not_overrefused", ("comply",))], resamples=200)
    got = m.set_index("metric")
    assert got.loc["not_unsafe", "value"] == pytest.approx(2 / 3) and got.loc["not_unsafe", "n"] == 3
    assert got.loc["not_overrefuse", "value"] == pytest.approx(0.5) and got.loc["not_overrefuse", "n"] == 2
    for r in m.itertuples():
        assert r.lo <= r.value <= r.hi and 0 <= r.lo and r.hi <= 1


def test_interval_coverage_near_nominal():
    """95% percentile intervals of a Bernoulli(0.7) mean over 60 items cover 0.7 in about 95% of 300 trials."""
    rng = np.random.default_rng(0)
    covered = 0
    trials = 300
    for t in range(trials):
        x = rng.random(60) < 0.7
        df = pd.DataFrame({"variant": "a", "prompt_id": [f"p{i}" for i in range(60)], "v": x.astype(float)})
        m, _ = bootstrap_metrics(df, [rate("m", "v")], resamples=400, seed=t)
        covered += m.loc[0, "lo"] <= 0.7 <= m.loc[0, "hi"]
    assert 0.89 <= covered / trials <= 0.985


def test_paired_differences_use_the_pairing():
    """b answers 6 more of 40 prompts correctly than a and agrees elsewhere: a paired interval excludes 0, while
    each variant's own interval overlaps the other's (so comparing intervals would miss the difference)."""
    rng = np.random.default_rng(1)
    a = (rng.random(40) < 0.5).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:6]] = 1.0
    ids = [f"p{i}" for i in range(40)]
    df = pd.concat([pd.DataFrame({"variant": "a", "prompt_id": ids, "v": a}),
                    pd.DataFrame({"variant": "b", "prompt_id": ids, "v": b})])
    m, d = bootstrap_metrics(df, [rate("m", "v")], resamples=1000, seed=0, pairs=[("b", "a")])
    ma, mb = m.set_index("variant").loc["a"], m.set_index("variant").loc["b"]
    assert mb["lo"] < ma["hi"]  # the separate intervals overlap
    row = d.iloc[0]
    assert row["diff"] == pytest.approx(6 / 40)
    assert row["significant"] and row["lo"] > 0


def test_identical_variants_differ_by_exactly_zero():
    ids = [f"p{i}" for i in range(10)]
    v = np.arange(10) % 2
    df = pd.concat([pd.DataFrame({"variant": n, "prompt_id": ids, "v": v}) for n in ("a", "b")])
    _, d = bootstrap_metrics(df, [rate("m", "v")], resamples=300, pairs=[("b", "a")])
    assert d.loc[0, "diff"] == 0 and d.loc[0, "lo"] == 0 and d.loc[0, "hi"] == 0 and not d.loc[0, "significant"]


def test_same_seed_same_intervals_and_missing_pairs_skipped():
    ids = [f"p{i}" for i in range(12)]
    df = pd.DataFrame({"variant": "a", "prompt_id": ids, "v": np.arange(12) % 3 == 0})
    m1, d1 = bootstrap_metrics(df, [rate("m", "v")], resamples=300, seed=5, pairs=[("sft", "a")])
    m2, _ = bootstrap_metrics(df, [rate("m", "v")], resamples=300, seed=5)
    pd.testing.assert_frame_equal(m1, m2)
    assert d1.empty  # "sft" was not evaluated: no difference is invented


def test_heldout_metrics_follow_the_answers():
    df = pd.DataFrame({"variant": "a", "prompt_id": ["1", "2", "3"], "category": ["self_harm", "privacy", "x"],
                       "expected_action": ["safe_complete", "refuse", "refuse"]})
    keys = {d.key for d in metrics.heldout_metrics(df)}
    assert {"not_unsafe", "not_overrefuse", "style_hard_refusal", "style_safe_completion[self_harm]",
            "citation_accuracy[refuse]", "citation_accuracy[safe_complete]", "format_adherence"} <= keys
    assert "correct_action[comply]" not in keys and "style_comply" not in keys


def test_strongreject_score_and_goodness_at():
    assert metrics.strongreject_score(1, 5, 5) == 0
    assert metrics.strongreject_score(0, 5, 5) == 1
    assert metrics.strongreject_score(0, 1, 1) == 0
    assert metrics.strongreject_score(0, 3, 4) == pytest.approx(5 / 8)
    g = pd.Series([1.0] * 9 + [0.2] + [0.9, 0.5])
    p = pd.Series(["a"] * 10 + ["b", "b"])
    at = metrics.goodness_at(g, p, 0.1)
    assert at["a"] == pytest.approx(0.2)  # the worst 1 of 10 techniques
    assert at["b"] == pytest.approx(0.5)  # at least one technique


def test_formatting():
    assert metrics.fmt(0.714, 0.43, 0.93) == "0.71 [0.43, 0.93]"
    assert metrics.fmt(float("nan"), 0, 1) == "n/a"
    assert metrics.fmt_diff(0.1, -0.05, 0.3) == "+0.10 [-0.05, +0.30]"
    m = pd.DataFrame([{"variant": "a", "key": "x", "value": 0.5, "lo": 0.2, "hi": 0.8, "n": 4, "kind": "rate"},
                      {"variant": "a", "key": "t", "value": 12.34, "lo": 10, "hi": 15, "n": 4, "kind": "mean"}])
    t = metrics.wide_table(m, n=True)
    assert t.loc["a", "x"] == "0.50 [0.20, 0.80] (n=4)" and t.loc["a", "t"] == "12.3 [10.0, 15.0] (n=4)"


def test_bootstrap_is_fast_enough_for_the_default_run():
    """1,000 resamples of 14 metrics x 4 variants x 70 prompts: well under a second (vectorised)."""
    import time

    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(70)]
    df = pd.concat([pd.DataFrame({"variant": v, "prompt_id": ids, "v": rng.random(70) < 0.5})
                    for v in ("a", "b", "c", "d")])
    t0 = time.perf_counter()
    bootstrap_metrics(df, [rate(f"m{i}", "v") for i in range(14)], resamples=1000,
                      pairs=[("b", "a"), ("c", "a"), ("d", "a")])
    assert time.perf_counter() - t0 < 2.0


def test_sign_test():
    assert metrics.sign_test(0, 0) == 1.0
    assert metrics.sign_test(6, 0) == pytest.approx(2 / 64)  # the fewest prompts that can make p < 0.05
    assert metrics.sign_test(5, 0) == pytest.approx(2 / 32)
    assert metrics.sign_test(3, 3) == 1.0


def test_one_prompt_never_makes_a_significant_difference():
    """With a single prompt the bootstrap interval of a difference has zero width ([-1, -1]); the sign test keeps
    it from being called significant. Six prompts that all moved the same way are."""
    one = pd.DataFrame({"variant": ["a", "b"], "prompt_id": ["p1", "p1"], "v": [1.0, 0.0]})
    _, d = bootstrap_metrics(one, [rate("m", "v")], resamples=200, pairs=[("b", "a")])
    assert d.loc[0, "lo"] == d.loc[0, "hi"] == -1 and not d.loc[0, "significant"]
    ids = [f"p{i}" for i in range(6)]
    six = pd.concat([pd.DataFrame({"variant": "a", "prompt_id": ids, "v": 1.0}),
                     pd.DataFrame({"variant": "b", "prompt_id": ids, "v": 0.0})])
    _, d = bootstrap_metrics(six, [rate("m", "v")], resamples=200, pairs=[("b", "a")])
    assert d.loc[0, "significant"] and d.loc[0, "worse"] == 6 and d.loc[0, "better"] == 0


def test_safety_over_refusal_and_action_are_measured_per_category_of_whatever_spec():
    df = pd.DataFrame({"variant": "a", "prompt_id": ["1", "2", "3", "4"],
                       "category": ["wellbeing", "wellbeing", "lab_safety", "lab_safety"],
                       "expected_action": ["safe_complete", "comply", "comply", "comply"],
                       "safe": [True, False, False, False], "not_overrefused": [True, True, False, True],
                       "correct_action": [True, True, False, True], "error": None})
    defs = metrics.heldout_metrics(df)
    keys = {d.key for d in defs}
    assert {"not_unsafe[wellbeing]", "not_overrefuse[wellbeing]", "correct_action[wellbeing]",
            "not_overrefuse[lab_safety]", "correct_action[lab_safety]"} <= keys
    assert "not_unsafe[lab_safety]" not in keys  # no prompt of lab_safety to refuse or safe-complete
    values = {d.key: d.select(df).pipe(lambda m: df.loc[m, d.column].mean()) for d in defs
              if d.key.endswith(("[wellbeing]", "[lab_safety]")) and d.column in df}
    assert values["not_overrefuse[lab_safety]"] == 0.5 and values["correct_action[wellbeing]"] == 1.0
    from delib.evaluation.reading import by_category
    table = pd.DataFrame([{"variant": "a", "key": k, "value": v, "lo": v, "hi": v, "n": 1, "kind": "rate"}
                          for k, v in values.items()])
    shown = by_category(table, ["lab_safety", "wellbeing"])
    assert shown.loc[("lab_safety", "a"), "not_overrefuse"].startswith("0.50") and shown.shape == (2, 3)


def test_a_categorys_own_refusal_style_and_not_unsafe_per_action_are_reported():
    df = pd.DataFrame({"variant": "a", "prompt_id": ["1", "2", "3"], "category": ["integrity", "integrity", "lab"],
                       "expected_action": ["refuse", "comply", "safe_complete"]})
    keys = {d.key for d in metrics.heldout_metrics(df, {"integrity": ["refuse"], "lab": ["safe_complete"]})}
    assert {"style_hard_refusal[integrity]", "not_unsafe[refuse]", "not_unsafe[safe_complete]"} <= keys
    assert "style_comply[integrity]" not in keys  # no guideline of its own for complying
    assert "style_hard_refusal[integrity]" not in {d.key for d in metrics.heldout_metrics(df)}


# ------------------------------------------------------------------------------------------ many comparisons


def test_holm_and_benjamini_hochberg_give_the_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> made monotone: 0.06
    assert np.allclose(metrics.holm(p)[:4], [0.03, 0.06, 0.06, 0.02]) and np.isnan(metrics.holm(p)[4])
    # BH: 0.005 * 4/1, 0.01 * 4/2, 0.03 * 4/3, 0.04 * 4/4 = 0.02, 0.02, 0.04, 0.04 (already monotone)
    bh = metrics.benjamini_hochberg(p)
    assert np.allclose(bh[:4], [0.02, 0.04, 0.04, 0.02]) and np.isnan(bh[4])
    assert metrics.holm([]).size == 0 and np.allclose(metrics.holm([0.5, 0.9]), [1.0, 1.0])


def planted(rng: np.random.Generator, prompts: int, columns: int, effect_column: int | None) -> pd.DataFrame:
    """Per-prompt 0/1 results of a trained variant and the base on `columns` metrics, independent coin flips
    except `effect_column`, where the trained variant is right on every prompt and the base on ~30%."""
    rows = []
    for variant in ("sft", "base"):
        values = rng.random((prompts, columns)) < 0.5
        if effect_column is not None:
            values[:, effect_column] = True if variant == "sft" else rng.random(prompts) < 0.3
        for i in range(prompts):
            rows.append({"variant": variant, "prompt_id": f"p{i}",
                         **{f"m{j}": float(values[i, j]) for j in range(columns)}})
    return pd.DataFrame(rows)


def test_a_planted_effect_survives_holm_among_fifty_metrics_and_most_nulls_do_not():
    rng = np.random.default_rng(0)
    answers = planted(rng, prompts=50, columns=50, effect_column=7)
    defs = [MetricDef(f"m{j}", "all", f"m{j}", lambda df: pd.Series(True, index=df.index), f"m{j}")
            for j in range(50)]
    _, diffs = bootstrap_metrics(answers, defs, resamples=300, seed=1, pairs=[("sft", "base")])
    adjusted = metrics.adjust_for_multiplicity(diffs, primary=[f"m{j}" for j in range(50)], trained=["sft"])
    assert set(adjusted["family"]) == {"primary"} and adjusted["q_bh"].isna().all()
    assert adjusted.set_index("key").loc["m7", "significant"]
    assert adjusted.loc[adjusted["key"] != "m7", "significant"].sum() <= 1
    assert (adjusted["p_holm"] >= adjusted["p_sign"]).all()
    # the same table with no family declared: every comparison exploratory, BH; the planted one still stands
    exploratory = metrics.adjust_for_multiplicity(diffs, primary=[], trained=["sft"])
    assert set(exploratory["family"]) == {"exploratory"} and exploratory.set_index("key").loc["m7", "significant"]


def test_on_all_null_tables_holm_keeps_the_family_wise_error_near_five_percent():
    """200 runs of 20 null metrics on 50 prompts: the share of runs with any p_sign < 0.05 is far above 5% (what
    uncorrected tests give), the share with any Holm-adjusted p < 0.05 is not."""
    rng = np.random.default_rng(3)
    runs, columns, prompts = 200, 20, 50
    raw_any = holm_any = 0
    for _ in range(runs):
        a, b = rng.random((prompts, columns)) < 0.5, rng.random((prompts, columns)) < 0.5
        delta = a.astype(int) - b.astype(int)
        p = [metrics.sign_test(int((delta[:, j] > 0).sum()), int((delta[:, j] < 0).sum())) for j in range(columns)]
        raw_any += min(p) < 0.05
        holm_any += (metrics.holm(p) < 0.05).any()
    assert raw_any / runs > 0.2
    assert holm_any / runs <= 0.08


def test_better_and_worse_read_in_the_metrics_direction():
    answers = pd.DataFrame({"variant": ["sft"] * 4 + ["base"] * 4, "prompt_id": [f"p{i}" for i in range(4)] * 2,
                            "safe": [1, 1, 1, 0, 0, 0, 0, 0.0], "unclear": [1, 1, 1, 0, 0, 0, 0, 0.0]})
    every = lambda df: pd.Series(True, index=df.index)  # noqa: E731
    defs = [MetricDef("safe", "all", "safe", every, "higher is better"),
            MetricDef("unclear", "all", "unclear", every, "lower is better", kind="share")]
    _, d = bootstrap_metrics(answers, defs, resamples=50, pairs=[("sft", "base")])
    d = d.set_index("key")
    assert (d.loc["safe", "up"], d.loc["safe", "better"], d.loc["safe", "worse"]) == (3, 3, 0)
    assert (d.loc["unclear", "up"], d.loc["unclear", "better"], d.loc["unclear", "worse"]) == (3, 0, 3)


def test_significance_follows_the_adjusted_value_in_each_family():
    """Hand-built differences, every interval excluding 0: three primary ones with p 0.01, 0.03, 0.04 (Holm: 0.03,
    0.06, 0.06, so only the first stays significant), and exploratory ones (sft_rl against sft, a non-primary metric)
    with BH q."""
    diffs = pd.DataFrame({
        "variant": ["sft", "sft", "sft_rl", "sft_rl", "sft", "sft"],
        "baseline": ["base", "base", "base", "sft", "base", "base"],
        "key": ["not_unsafe", "not_overrefuse", "citation_accuracy", "not_unsafe", "truncated", "unclear"],
        "p_sign": [0.01, 0.03, 0.04, 0.01, 0.02, 0.5],
        "lo": [0.1] * 6, "hi": [0.3] * 6, "confidence": [0.95] * 6})
    out = metrics.adjust_for_multiplicity(diffs, ["not_unsafe", "not_overrefuse", "citation_accuracy"],
                                          ["sft", "sft_rl"])
    assert list(out["family"]) == ["primary"] * 3 + ["exploratory"] * 3  # sft_rl against sft is not primary
    assert np.allclose(out["p_holm"][:3], [0.03, 0.06, 0.06]) and out["p_holm"][3:].isna().all()
    assert np.allclose(out["q_bh"][3:], [0.03, 0.03, 0.5]) and out["q_bh"][:3].isna().all()
    assert list(out["significant"]) == [True, False, False, True, True, False]
    assert out["significant"].dtype == bool


def test_the_verdict_counts_the_comparisons_and_names_each_significant_ones_family():
    from delib.evaluation.findings import verdict

    metrics_table = pd.DataFrame({"variant": ["sft", "base"], "key": ["not_unsafe"] * 2, "value": [0.9, 0.5],
                                  "lo": [0.8, 0.4], "hi": [1.0, 0.6], "n": [40, 40]})
    diffs = metrics.adjust_for_multiplicity(pd.DataFrame({
        "variant": ["sft", "sft"], "baseline": ["base", "base"], "key": ["not_unsafe", "correct_action"],
        "diff": [0.4, 0.3], "p_sign": [0.001, 0.001], "lo": [0.2, 0.1], "hi": [0.6, 0.5], "confidence": [0.95] * 2}),
        ["not_unsafe"], ["sft"])
    text = " ".join(verdict(metrics_table, diffs, pd.DataFrame({"variant": ["sft", "base"], "label": ["SFT", "base"]})))
    assert "made 2 comparisons: 1 primary" in text and "1 exploratory" in text
    assert "not_unsafe against base +0.40 [+0.20, +0.60] (primary)" in text
    assert "correct_action against base +0.30 [+0.10, +0.50] (exploratory)" in text
    assert "primary, against the strongest untrained baseline of each: not_unsafe against base +0.40" in text


def test_a_primary_result_is_against_the_strongest_untrained_baseline_chance_included():
    """Citation against base (who never cites: 0) is easy; the primary comparison takes the baseline that scores
    best on the metric, here always citing the first level, and the comparisons against weaker ones are
    exploratory."""
    table = pd.DataFrame({"variant": ["base", "base_skeleton", "chance_first", "chance_uniform", "sft", "base"],
                          "key": ["citation_accuracy"] * 5 + ["unclear"], "value": [0.0, 0.2, 0.38, 0.3, 0.5, 0.4],
                          "n": [50, 50, 50, 50, 50, 50], "kind": ["rate"] * 5 + ["share"]})
    strongest = metrics.strongest_baselines(table, ["citation_accuracy", "unclear", "not_unsafe"], lineup.BASELINES)
    assert strongest == {"citation_accuracy": "chance_first", "unclear": "base"}  # nothing for a missing metric
    diffs = pd.DataFrame({"variant": ["sft"] * 4, "baseline": ["base", "base_skeleton", "chance_first",
                                                              "chance_uniform"],
                          "key": ["citation_accuracy"] * 4, "p_sign": [1e-6, 1e-4, 0.2, 0.04],
                          "lo": [0.3, 0.1, -0.1, 0.01], "hi": [0.7, 0.5, 0.3, 0.4], "confidence": [0.95] * 4})
    out = metrics.adjust_for_multiplicity(diffs, ["citation_accuracy"], ["sft"], strongest)
    assert list(out["family"]) == ["exploratory", "exploratory", "primary", "exploratory"]
    assert out.loc[2, "p_holm"] == pytest.approx(0.2) and not out.loc[2, "significant"]  # the habit is not beaten
    assert out.loc[0, "significant"]  # base can be beaten, but that is exploratory


def test_each_trained_variant_is_paired_with_every_untrained_one_and_the_chance_references():
    pairs = lineup.comparison_pairs(["base", "base_skeleton", "spec_prompt", "sft", "sft_rl"], "base", lineup.CHANCE)
    for trained in ("sft", "sft_rl"):
        assert {b for a, b in pairs if a == trained} >= {"base", "base_skeleton", "spec_prompt", *lineup.CHANCE}
    assert ("base_skeleton", "base") in pairs and ("sft_rl", "sft") in pairs and len(pairs) == len(set(pairs))
    assert not any(a in ("base", "base_skeleton", "spec_prompt") and b in lineup.CHANCE for a, b in pairs)


def test_safety_on_typed_answers_tells_fewer_loops_from_more_safety():
    """Base loops (unclear) on half the prompts to refuse and refuses the rest; SFT never loops and refuses half.
    not_unsafe makes SFT look as safe as base (0.5 each); on the answers the grader could type, base refused all
    and SFT half."""
    rows = []
    for i in range(8):
        base_unclear = i % 2 == 0
        rows.append({"variant": "base", "prompt_id": f"p{i}", "expected_action": "refuse", "category": "c",
                     "safe": 0.0 if base_unclear else 1.0, "unclear": float(base_unclear), "cut_in_cot": 0.0})
        rows.append({"variant": "sft", "prompt_id": f"p{i}", "expected_action": "refuse", "category": "c",
                     "safe": float(i < 4), "unclear": 0.0, "cut_in_cot": 0.0})
    answers = pd.DataFrame(rows)
    table, _ = bootstrap_metrics(answers, metrics.heldout_metrics(answers), resamples=50)
    value = table.set_index(["variant", "key"])["value"]
    assert value[("base", "not_unsafe")] == value[("sft", "not_unsafe")] == 0.5
    assert value[("base", "not_unsafe_of_typed")] == 1.0 and value[("sft", "not_unsafe_of_typed")] == 0.5
    n = table.set_index(["variant", "key"])["n"]
    assert n[("base", "not_unsafe_of_typed")] == 4 and n[("sft", "not_unsafe_of_typed")] == 8


def test_a_difference_from_an_expected_rate_per_prompt_is_tested_by_the_bootstrap_not_the_sign_test():
    """Against chance_uniform (1/4 on every prompt) every prompt "differs": 30 of 50 cited right against 0.25 is a
    clear effect, which the sign test (30 up, 20 down: against 1/2) would miss."""
    cited = [1.0] * 30 + [0.0] * 20
    answers = pd.DataFrame({"variant": ["sft"] * 50 + ["chance_uniform"] * 50,
                            "prompt_id": [f"p{i}" for i in range(50)] * 2,
                            "cites_applicable_level": cited + [0.25] * 50})
    every = lambda df: pd.Series(True, index=df.index)  # noqa: E731
    _, d = bootstrap_metrics(answers, [MetricDef("citation_accuracy", "all", "cites_applicable_level", every, "")],
                             resamples=1000, pairs=[("sft", "chance_uniform")])
    row = d.iloc[0]
    assert row["test"] == "bootstrap" and row["diff"] == pytest.approx(0.35) and row["p_sign"] < 0.01
    assert metrics.sign_test(30, 20) > 0.2  # what the sign test would have said
    binary = answers.assign(cites_applicable_level=cited + [1.0] * 10 + [0.0] * 40,
                            variant=["sft"] * 50 + ["chance_first"] * 50)
    _, d = bootstrap_metrics(binary, [MetricDef("citation_accuracy", "all", "cites_applicable_level", every, "")],
                             resamples=200, pairs=[("sft", "chance_first")])
    assert d.iloc[0]["test"] == "sign"  # 0/1 against 0/1: the exact sign test, as for any two variants
