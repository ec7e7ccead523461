"""Stage 07: findings written from the numbers, metrics.json, report.html, runs compared, and the figures."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from delib.evaluation import findings, metrics
from delib.evaluation import plots as eval_plots
from delib.evaluation import reading, report


def fake_metrics() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(20)]
    actions = ["comply", "refuse", "safe_complete", "refuse"] * 5
    rows = []
    for v, p_safe in (("base", 0.3), ("sft", 0.95)):
        for pid, a in zip(ids, actions):
            rows.append({"variant": v, "prompt_id": pid, "category": "self_harm", "expected_action": a,
                         "safe": rng.random() < p_safe, "not_overrefused": rng.random() < 0.8,
                         "correct_action": rng.random() < 0.5, "style_ok": rng.random() < 0.5,
                         "cites_right_category": v == "sft", "cites_applicable_level": v == "sft",
                         "well_formed": v == "sft", "cot_tokens": 40.0,
                         "completion_tokens": 80.0, "latency_s": 1.5, "error": None})
    answers = pd.DataFrame(rows)
    m, d = metrics.bootstrap_metrics(answers, metrics.heldout_metrics(answers), resamples=500,
                                     pairs=[("sft", "base")])
    variants = pd.DataFrame([
        {"variant": "base", "label": "base", "available": True, "reason": ""},
        {"variant": "sft", "label": "SFT", "available": True, "reason": ""},
        {"variant": "sft_rl", "label": "SFT+RL", "available": False,
         "reason": "not available: stage 05 has not produced a model"}])
    return m, d, variants


def test_findings_say_what_was_and_was_not_shown():
    m, d, variants = fake_metrics()
    info = {"prompts": 20, "prompts_by_action": {"comply": 5, "refuse": 10, "safe_complete": 5}, "resamples": 500}
    text = findings.findings(m, d, variants, info)
    joined = "\n".join(text)
    assert "Not evaluated: SFT+RL (sft_rl): not available: stage 05 has not produced a model" in joined
    assert not any("SFT+RL" in t and "[" in t for t in text if not t.startswith("Not evaluated"))  # no number
    sig = [t for t in text if t.startswith("SFT against base: significant")]
    assert sig and "not_unsafe" in sig[0] and "citation_accuracy" in sig[0]
    nonsig = [t for t in text if "not significant" in t]
    assert nonsig and "not_overrefuse" in nonsig[0]  # drawn at the same rate for both: no claim of a difference
    assert text[0].startswith("Each variant answered 20 held-out prompts of the dev split (tuned on: a development "
                              "figure;") and "(5 comply, 10 refuse, 5 safe_complete)" in text[0]
    assert "cover the sampling of prompts only, not the run's seed" in text[0]


def test_findings_say_when_too_few_prompts_differ_for_the_sign_test():
    """5 prompts all better by SFT: p = 0.0625 at best, so no claim can be made, and the report says why."""
    rows = [{"variant": v, "prompt_id": f"p{i}", "category": "x", "expected_action": "refuse",
             "safe": v == "sft" or i >= 5, "error": None} for v in ("base", "sft") for i in range(12)]
    answers = pd.DataFrame(rows)
    defs = [md for md in metrics.heldout_metrics(answers) if md.key == "not_unsafe"]
    m, d = metrics.bootstrap_metrics(answers, defs, resamples=300, pairs=[("sft", "base")])
    row = d[d["key"] == "not_unsafe"].iloc[0]
    assert row["better"] == 5 and row["worse"] == 0 and not row["significant"]
    variants = pd.DataFrame([{"variant": v, "label": v, "available": True, "reason": ""} for v in ("base", "sft")])
    text = "\n".join(findings.findings(m, d, variants, {"prompts": 12, "resamples": 300}))
    assert findings.sign_test_floor(0.05) == 6
    assert "not_unsafe could not have been significant: fewer than 6 prompts differ" in text and "0.0625" in text


def test_tables_carry_intervals():
    m, d, _ = fake_metrics()
    h = reading.headline_table(m)
    assert list(h.index) == ["base", "sft"] and h.loc["sft", "citation_accuracy"] == "1.00 [1.00, 1.00]"
    dt = reading.differences_table(d)
    assert dt.loc["sft - base", "citation_accuracy"] == "+1.00 [+1.00, +1.00] *"


def test_metrics_document_is_json_with_nulls(tmp_path):
    m, d, variants = fake_metrics()
    m.loc[0, "lo"] = float("nan")
    ev = {"metrics": m, "differences": d, "variants": variants, "definitions": pd.DataFrame(), "info": {"prompts": 20}}
    times = pd.DataFrame([{"stage": "06_evaluate", "status": "ok", "duration_s": 12.5}])
    doc = report.metrics_document(tmp_path, ev, pd.DataFrame(), pd.DataFrame(), {}, {}, times, ["a finding"])
    path = report.write_json(tmp_path, doc)  # the run folder: metrics.json at its top
    assert path == tmp_path / "metrics.json"
    back = json.loads(path.read_text())
    assert back["metrics"]["sft"]["citation_accuracy"]["value"] == 1.0
    assert back["metrics"]["base"][m.loc[0, "key"]]["lo"] is None
    assert back["stage_times_s"] == {"06_evaluate": 12.5} and back["findings"] == ["a finding"]
    assert "NaN" not in path.read_text()


def test_judge_summary_intervals():
    scored = pd.DataFrame({"judge_overall": [2, 4, 6, 8] * 5, "final_score": [5.0, 7.0] * 10})
    s = report.judge_summary(scored, 6.0, 500, 0)
    assert s["judge_overall"]["mean"] == 5 and s["judge_overall"]["lo"] < 5 < s["judge_overall"]["hi"]
    assert s["above_threshold"] == 0.5 and s["samples"] == 20


def test_compare_runs_side_by_side(tmp_path):
    m, _, _ = fake_metrics()
    for run in ("sft_only", "rl_only"):
        (tmp_path / run / "06_evaluate").mkdir(parents=True)
        m.to_csv(tmp_path / run / "06_evaluate" / "metrics.csv", index=False)
    (tmp_path / "empty").mkdir()
    table = report.compare_runs(report.resolve_runs(["sft_only", "rl_only", "empty"], tmp_path))
    assert set(table["run"]) == {"sft_only", "rl_only", "empty"}
    assert table.loc[table["run"] == "empty", "missing"].iloc[0].startswith("no 06_evaluate/metrics.csv")
    wide = report.comparison_table(table)
    assert "sft_only / sft" in wide.index and "rl_only / base" in wide.index and "not_unsafe" in wide.columns


def test_html_report_has_tables_figures_and_no_code(tmp_path):
    m, d, variants = fake_metrics()
    png = eval_plots.metrics_per_variant(m, ["not_unsafe", "not_overrefuse"], tmp_path / "m.png")
    page = report.render_html("Run t", [report.Section("Headline", ["<plain> text"], [("metrics",
                                                       reading.headline_table(m))], [("per variant", png)])])
    assert "<table" in page and "data:image/png;base64," in page and "&lt;plain&gt; text" in page
    assert "import " not in page and "def " not in page


def test_figures_are_small_pngs(tmp_path):
    m, d, _ = fake_metrics()
    counts = pd.DataFrame({"variant": ["sft", "sft"], "category": ["self_harm", "privacy"],
                           "cited_category": ["self_harm", "other"], "citations": [3, 1]})
    logs = {"04_sft": pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.5, 2.2]}),
            "05_rl": pd.DataFrame({"step": [1, 2], "reward": [0.3, 0.4], "reward_std": [0.1, 0.2],
                                   "kl": [0.0, 0.01]})}
    scored = pd.DataFrame({"judge_overall": [3, 7, 8], "final_score": [4.0, 6.5, 8.0]})
    answers = pd.DataFrame({"variant": ["a"] * 4, "expected_action": ["comply", "comply", "refuse", "refuse"],
                            "refusal": ["full_compliance", "full_refusal", "full_refusal", "partial_refusal"]})
    paths = [
        eval_plots.metrics_per_variant(m, ["not_unsafe", "not_overrefuse"], tmp_path / "a.png"),
        eval_plots.differences(d, ["not_unsafe", "citation_accuracy"], tmp_path / "b.png"),
        eval_plots.pareto(m, tmp_path / "c.png"),
        eval_plots.judge_scores(scored, 6.0, tmp_path / "d.png"),
        eval_plots.training_curves(logs, tmp_path / "e.png"),
        eval_plots.citation_heatmap(counts, tmp_path / "f.png"),
        eval_plots.refusal_labels(answers, tmp_path / "g.png"),
        eval_plots.training_curves({}, tmp_path / "h.png"),  # nothing trained: a placeholder that says so
        eval_plots.differences(d.iloc[0:0], ["x"], tmp_path / "i.png"),
    ]
    for p in paths:
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size < 150_000


def test_pareto_front():
    pts = pd.DataFrame({"x": [0.9, 0.5, 0.4, 0.95], "y": [0.2, 0.9, 0.5, 0.1]}, index=list("abcd"))
    assert list(eval_plots.pareto_front(pts, "x", "y").index) == ["b", "a", "d"]


def test_verdict_on_the_trained_variants():
    m, d, variants = fake_metrics()
    text = findings.verdict(m, d, variants)
    assert text[0].startswith("SFT writes a chain of thought and an answer in the trained format for 1.00")
    assert "not_unsafe +" in text[0] and "(significant)" in text[0]
    assert text[-1].startswith("Significant against an untrained model: SFT not_unsafe against base")
    only_base = m[m["variant"] == "base"]
    assert findings.verdict(only_base, d.iloc[0:0], variants) == [
        "No trained model was evaluated, so this run says nothing about what training achieved."]


def _same_model_answers():
    """Answers where SFT and base are the same model: nothing may be called significant."""
    ids = [f"p{i}" for i in range(20)]
    rows = [{"variant": v, "prompt_id": pid, "category": "x", "expected_action": a, "safe": i % 2 == 0,
             "not_overrefused": True, "correct_action": True, "style_ok": True, "cites_right_category": False,
             "cites_applicable_level": False, "well_formed": False, "error": None}
            for v in ("base", "sft") for i, (pid, a) in enumerate(zip(ids, ["comply", "refuse"] * 10))]
    answers = pd.DataFrame(rows)
    return answers, metrics.heldout_metrics(answers)


def test_verdict_says_when_nothing_is_reproduced():
    answers, defs = _same_model_answers()
    m, d = metrics.bootstrap_metrics(answers, defs, 200, pairs=[("sft", "base")])
    variants = pd.DataFrame([{"variant": "base", "label": "base", "available": True, "reason": ""},
                             {"variant": "sft", "label": "SFT", "available": True, "reason": ""}])
    text = findings.verdict(m, d, variants)
    assert "does not reproduce the paper's effects" in text[-1]
    assert "not_unsafe +0.00 [+0.00, +0.00] (not significant)" in text[0]


def test_the_stated_confidence_level_is_the_one_used(tmp_path):
    m, d, variants = fake_metrics()
    info = {"prompts": 20, "prompts_by_action": {"comply": 5, "refuse": 15}, "resamples": 500, "confidence": 0.9}
    text = findings.findings(m, d, variants, info)[0]
    assert "90% percentile bootstrap" in text and "p < 0.1." in text and "95%" not in text
    assert set(m["confidence"]) == {0.95} and eval_plots.level(m) == "95%"
    assert eval_plots.level(m.assign(confidence=0.8)) == "80%"


def test_judge_summary_interval_follows_the_level():
    scored = pd.DataFrame({"judge_overall": np.arange(20, dtype=float) % 10, "final_score": np.linspace(2, 8, 20)})
    wide = report.judge_summary(scored, 5.0, 500, 0, confidence=0.95)["final_score"]
    narrow = report.judge_summary(scored, 5.0, 500, 0, confidence=0.5)["final_score"]
    assert wide["lo"] < narrow["lo"] <= narrow["mean"] <= narrow["hi"] < wide["hi"]
    assert findings.percent(0.95) == "95%" and findings.percent(0.975) == "97.5%"


def test_the_headline_holds_each_categorys_style_metric_that_the_run_has_whatever_the_spec_calls_it():
    from delib.evaluation.reading import headline
    present = ["not_unsafe", "style_safe_completion[wellbeing]", "style_safe_completion[lab_safety]",
               "style_safe_completion", "citation_accuracy", "cot_tokens"]
    assert headline(present) == ["not_unsafe", "style_safe_completion[lab_safety]", "style_safe_completion[wellbeing]",
                                 "citation_accuracy"]


def test_a_caveat_says_when_held_out_labels_came_from_the_labeller_model():
    info = {"label_sources": {"category_source": {"file": 10, "model": 2}, "action_source": {"level": 9, "model": 3}}}
    found = [c for c in findings.caveats(info) if "labeller model" in c]
    assert len(found) == 1 and "2 categories and 3 expected actions" in found[0]
    assert not [c for c in findings.caveats({"label_sources": {"action_source": {"file": 12}}}) if "labeller" in c]
