"""`delib sweep`: runs from a grid and named variants, run in order with resume, and the summary: runs paired on
the same held-out prompts, and means over seeds with a two-level bootstrap interval."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from delib.evaluation import sweep_summary
from delib.run.sweep import SweepError, load_sweep, run_sweep


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_grid_crossed_with_named_variants_makes_one_valid_run_each(tmp_path, monkeypatch):
    monkeypatch.setenv("DELIB_ROOT", str(Path(__file__).resolve().parents[1]))
    sweep = load_sweep(write(tmp_path, {"name": "abl", "base": "params/smoke.yaml",
                                        "grid": {"seed": [0, 1]},
                                        "variants": [{"name": "both", "set": {}},
                                                     {"name": "rl_only", "set": {"rl.from_sft": False}}]}))
    assert [r.name for r in sweep.runs] == ["abl-both-seed_0", "abl-both-seed_1", "abl-rl_only-seed_0",
                                            "abl-rl_only-seed_1"]
    rl_only = sweep.runs[3]
    assert rl_only.params.rl.from_sft is False and rl_only.params.seed == 1 and rl_only.params.run_name == rl_only.name
    assert rl_only.overrides == {"variant": "rl_only", "rl.from_sft": False, "seed": 1}
    assert sweep.runs[0].params.rl.from_sft is True  # the base recipe's value where the variant sets nothing


@pytest.mark.parametrize("doc, message", [
    ({"name": "a", "base": "params/smoke.yaml"}, "give a grid, variants, or both"),
    ({"name": "a", "base": "params/nope.yaml", "grid": {"seed": [0]}}, "is not a recipe file"),
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"rl.from_sftt": [True]}}, "rl"),
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"seed": []}}, "non-empty lists"),
    ({"name": "a b", "base": "params/smoke.yaml", "grid": {"seed": [0]}}, "name"),
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"seed": [0]}, "extra": 1}, "unknown key"),
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"run_name": ["x"]}}, "run_name is set by the sweep"),
])
def test_a_bad_sweep_file_is_refused_before_anything_runs(tmp_path, monkeypatch, doc, message):
    monkeypatch.setenv("DELIB_ROOT", str(Path(__file__).resolve().parents[1]))
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, doc))


def test_runs_go_in_order_with_resume_each_has_its_params_file_and_a_failure_does_not_stop_the_rest(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DELIB_ROOT", str(Path(__file__).resolve().parents[1]))
    doc = yaml.safe_load(Path("params/smoke.yaml").read_text())
    doc["outputs_dir"] = str(tmp_path / "outputs")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setattr("delib.run.sweep.project_root", lambda: tmp_path)
    sweep = load_sweep(write(tmp_path, {"name": "s", "base": "base.yaml", "grid": {"seed": [0, 1, 2]}}))
    calls = []

    def fake_run(params_file, stages=None, resume=False, log=print, check=True):
        calls.append((Path(params_file).name, resume))
        if "seed_1" in str(params_file):
            raise RuntimeError("stage 04_sft failed")
        return tmp_path / "outputs" / Path(params_file).stem

    status = run_sweep(sweep, fake_run, log=lambda s: None)
    assert calls == [("s-seed_0.yaml", True), ("s-seed_1.yaml", True), ("s-seed_2.yaml", True)]
    assert [r["status"] for r in status] == ["ok", "failed", "ok"] and "04_sft" in status[1]["error"]
    written = yaml.safe_load((sweep.folder / "params" / "s-seed_2.yaml").read_text())
    assert written["seed"] == 2 and written["run_name"] == "s-seed_2"
    assert json.loads((sweep.folder / "sweep.json").read_text())["runs"][1]["status"] == "failed"


def answers(seed: int, p_cite: float, ids: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for variant in ("base", "sft"):
        for i, pid in enumerate(ids):
            cite = variant == "sft" and rng.random() < p_cite
            rows.append({"variant": variant, "prompt_id": pid, "category": "c", "level": "L0",
                         "expected_action": ("comply", "refuse")[i % 2], "safe": bool(rng.random() < 0.5),
                         "not_overrefused": True, "correct_action": bool(rng.random() < 0.5), "unclear": False,
                         "cut_in_cot": False, "cites_applicable_level": cite, "well_formed": cite,
                         "error": None})
    return pd.DataFrame(rows)


def test_pairs_are_compared_on_the_same_prompts_only():
    ids = [f"p{i}" for i in range(30)]
    runs = {"a": {"overrides": {"rl.from_sft": True, "seed": 0}, "answers": answers(0, 0.9, ids)},
            "b": {"overrides": {"rl.from_sft": False, "seed": 0}, "answers": answers(0, 0.0, ids)},
            "c": {"overrides": {"rl.from_sft": False, "seed": 1}, "answers": answers(1, 0.0, ids[:20])},
            "d": {"overrides": {"rl.from_sft": True, "seed": 1}, "answers": answers(2, 0.9, ids)}}
    pairs, skipped = sweep_summary.compare_pairs(runs, resamples=300)
    # one factor apart, same prompts; runs apart only in seed are summarised over seeds, not paired
    assert set(zip(pairs["run"], pairs["against"])) == {("a", "b")}
    assert skipped == ["c and d (differ in rl.from_sft) are not paired: their held-out prompt ids differ (20 and 30 "
                       "prompts, 20 in common)"]
    cite = pairs[(pairs["run"] == "a") & (pairs["against"] == "b") & (pairs["variant"] == "sft")
                 & (pairs["key"] == "citation_accuracy")].iloc[0]
    assert cite["diff"] > 0.6 and cite["significant"]
    # every pair of runs, variant and metric is one exploratory family: a BH q beside each p, significance by q
    assert set(pairs["family"]) == {"exploratory"} and pairs["p_holm"].isna().all()
    assert (pairs["q_bh"] >= pairs["p_sign"]).all() and cite["q_bh"] < 0.05
    same = pairs[(pairs["run"] == "a") & (pairs["against"] == "b") & (pairs["variant"] == "base")]
    assert (same["diff"] == 0).all() and not same["significant"].any()  # identical base answers: no difference


def test_the_interval_over_seeds_counts_the_seeds_as_well_as_the_prompts():
    ids = [f"p{i}" for i in range(40)]
    agree = {f"s{s}": {"overrides": {"seed": s}, "answers": answers(s, 0.5, ids)} for s in range(3)}
    spread = {f"t{s}": {"overrides": {"seed": s, "x": 1}, "answers": answers(s, p, ids)}
              for s, p in enumerate((0.1, 0.5, 0.9))}
    table = sweep_summary.over_seeds({**agree, **spread}, resamples=500)
    rows = table[(table["variant"] == "sft") & (table["key"] == "citation_accuracy")].set_index("group")
    calm, wild = rows.loc[json.dumps({})], rows.loc[json.dumps({"x": 1})]
    assert calm["seeds"] == 3 and len(calm["per_seed"]) == 3
    assert calm["lo"] <= calm["mean"] <= calm["hi"] and wild["lo"] <= wild["mean"] <= wild["hi"]
    assert (wild["hi"] - wild["lo"]) > 1.5 * (calm["hi"] - calm["lo"])  # seeds that disagree widen it


def seed_runs(effects: list[float], prompts: int = 40, base_rate: float = 0.3, seed: int = 0) -> dict:
    """One run per seed: base and sft answer the same prompts to refuse; sft is safe `effect` more often than base
    in that seed (the effect of the seed's trained model); base_skeleton is a weaker untrained baseline."""
    rng = np.random.default_rng(seed)
    runs = {}
    for s, effect in enumerate(effects):
        rows = []
        for variant, rate in (("base", base_rate), ("base_skeleton", base_rate / 3), ("sft", base_rate + effect)):
            for i in range(prompts):
                rows.append({"variant": variant, "prompt_id": f"p{i}", "category": "c", "expected_action": "refuse",
                             "safe": float(rng.random() < rate), "error": None})
        runs[f"s{s}"] = {"overrides": {"seed": s}, "answers": pd.DataFrame(rows)}
    return runs


def test_the_pooled_sweep_recovers_a_planted_effect_against_the_strongest_baseline():
    pooled = sweep_summary.pooled_over_seeds(seed_runs([0.4, 0.3, 0.35, 0.45]), ["not_unsafe"], resamples=400)
    (row,) = pooled.itertuples()
    assert row.variant == "sft" and row.baseline == "base" and row.seeds == 4 and len(row.per_seed) == 4
    assert 0.25 < row.diff < 0.5 and row.lo > 0 and row.p_holm < 0.05 and row.significant


def test_an_effect_of_one_seed_in_three_is_not_a_pooled_result():
    """Pooled over prompts alone, one seed's large effect would look significant; resampling the seeds first
    widens the interval to what another draw of seeds could give."""
    pooled = sweep_summary.pooled_over_seeds(seed_runs([0.6, 0.0, 0.0]), ["not_unsafe"], resamples=400)
    (row,) = pooled.itertuples()
    assert row.diff > 0.1 and row.lo <= 0 and not row.significant


def test_seeds_that_answered_the_same_prompts_share_the_prompt_resamples_when_pooled():
    """Each seed's sft beats base on the same 12 of 40 prompts: the seeds agree, so the pooled interval is the one
    prompt sample's interval, not narrower (resampling each seed's prompts on its own would average the prompts'
    variation away, as if there were 4 x 40 prompts)."""
    rows = [{"variant": v, "prompt_id": f"p{i}", "category": "c", "expected_action": "refuse",
             "safe": float(v == "sft" and i < 12), "error": None} for v in ("base", "sft") for i in range(40)]
    runs = {f"s{s}": {"overrides": {"seed": s}, "answers": pd.DataFrame(rows)} for s in range(4)}
    pooled = sweep_summary.pooled_over_seeds(runs, ["not_unsafe"], resamples=1000).iloc[0]
    assert pooled["diff"] == pytest.approx(0.3)
    single = sweep_summary.pooled_over_seeds({"a": runs["s0"], "b": {**runs["s1"], "overrides": {"seed": 1}}},
                                             ["not_unsafe"], resamples=1000).iloc[0]
    assert (pooled["hi"] - pooled["lo"]) > 0.8 * (single["hi"] - single["lo"]) > 0.2


def test_two_seeds_are_pooled_but_never_called_significant():
    pooled = sweep_summary.pooled_over_seeds(seed_runs([0.6, 0.6]), ["not_unsafe"], resamples=400)
    (row,) = pooled.itertuples()
    assert row.seeds == 2 and row.diff > 0.4 and row.lo > 0 and not row.significant


def test_null_groups_of_seeds_are_rarely_called_significant():
    calls = [sweep_summary.pooled_over_seeds(seed_runs([0.0] * 3, seed=k), ["not_unsafe"], resamples=200,
                                             seed=k)["significant"].iloc[0] for k in range(40)]
    assert sum(calls) <= 4  # 10% of 40 null groups at most (5% expected)


def test_the_summary_writes_a_report_and_names_the_runs_it_could_not_read(tmp_path):
    ids = [f"p{i}" for i in range(12)]
    status = []
    for s in range(2):
        rdir = tmp_path / f"r{s}"
        (rdir / "06_evaluate").mkdir(parents=True)
        answers(s, 0.5, ids).to_json(rdir / "06_evaluate" / "answers.jsonl", orient="records", lines=True)
        pd.DataFrame({"variant": ["base"], "key": ["x"]}).to_csv(rdir / "06_evaluate" / "metrics.csv", index=False)
        status.append({"run": f"r{s}", "overrides": {"seed": s}, "status": "ok", "run_dir": str(rdir)})
    status.append({"run": "r9", "overrides": {"seed": 9}, "status": "failed", "run_dir": None})
    doc = sweep_summary.summarise(tmp_path, status, resamples=200)
    assert doc["not_summarised"] == ["r9: failed"] and doc["over_seeds"] and doc["pairs"] == []
    page = (tmp_path / "report.html").read_text()
    assert "Over seeds" in page and "Pairs of runs" in page and "data:image/png;base64," in page
    assert json.loads((tmp_path / "summary.json").read_text())["resamples"] == 200


def test_named_variants_are_paired_with_each_other_at_the_same_grid_point():
    ids = [f"p{i}" for i in range(30)]
    runs = {name: {"factors": {"variant": name, "seed": s}, "overrides": {"variant": name, "seed": s, **extra},
                   "answers": answers(s, p, ids)}
            for name, s, p, extra in (("both", 0, 0.9, {}), ("rl_only", 0, 0.0, {"rl.from_sft": False, "x": 1}),
                                      ("rl_only1", 1, 0.0, {"rl.from_sft": False}))}
    pairs, _ = sweep_summary.compare_pairs(runs, resamples=200)
    assert set(zip(pairs["run"], pairs["against"], pairs["differs_in"])) == {("both", "rl_only", "variant")}


def test_seeds_that_answered_the_same_prompts_share_one_resample_of_them():
    """Three seeds that all wrote the same answers carry no more information than one: the interval over seeds
    must be as wide as one run's bootstrap interval, not narrower."""
    from delib.evaluation import metrics

    ids = [f"p{i}" for i in range(40)]
    same = answers(0, 0.5, ids)
    table = sweep_summary.over_seeds({f"s{s}": {"overrides": {"seed": s}, "answers": same} for s in range(3)},
                              resamples=1000)
    row = table[(table["variant"] == "sft") & (table["key"] == "citation_accuracy")].iloc[0]
    one = same[same["variant"] == "sft"]
    m, _ = metrics.bootstrap_metrics(one, [d for d in metrics.heldout_metrics(one) if d.key == "citation_accuracy"],
                                     resamples=1000, seed=1)
    assert row["same_prompts"] and (row["hi"] - row["lo"]) >= 0.9 * float(m["hi"].iloc[0] - m["lo"].iloc[0])


@pytest.mark.parametrize("doc, message", [
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"rl.from_sft": [True, False]},
      "variants": [{"name": "v", "set": {"rl.from_sft": False}}]}, "which the grid varies"),
    ({"name": "a", "base": "params/smoke.yaml", "grid": {"seed": [0]}, "stages": "09"}, "stages"),
    ({"name": "a", "base": "params/smoke.yaml", "variants": [{"name": "v", "set": [1]}]}, "set must be a mapping"),
])
def test_clashing_or_malformed_sweep_files_are_refused(tmp_path, monkeypatch, doc, message):
    monkeypatch.setenv("DELIB_ROOT", str(Path(__file__).resolve().parents[1]))
    with pytest.raises(SweepError, match=message):
        load_sweep(write(tmp_path, doc))


def test_run_names_keep_a_negative_value_and_the_sweep_name_as_given():
    from delib.run.sweep import run_name

    assert run_name("my-sweep", None, {"seed": -1}) == "my-sweep-seed_-1"
    assert run_name("abl", "rl only", {"rl.from_sft": False}) == "abl-rl_only-from_sft_false"
