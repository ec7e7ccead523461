"""Stages 06-07's run files: variants.csv keeps its empty text cells empty, the report's files sit at the top of the
run folder, and stage 07 runs from stage 06's files alone (no model, no kernel)."""
from __future__ import annotations

import json

import pandas as pd

from delib.evaluation import metrics
from delib.run import files
from delib.run.config import validate_params


def test_variants_csv_reads_an_empty_reason_as_empty_text(tmp_path):
    table = pd.DataFrame([{"variant": "base", "label": "base", "model": "m", "available": True, "reason": ""},
                          {"variant": "sft", "label": "SFT", "model": "", "available": False,
                           "reason": "not available: stage 04 has not run"}])
    files.write(tmp_path, files.VARIANTS, table)
    back = files.read(tmp_path, files.VARIANTS)
    assert back["reason"].tolist() == ["", "not available: stage 04 has not run"] and back["model"].tolist()[1] == ""
    assert back["available"].tolist() == [True, False]


def test_the_report_and_metrics_json_are_at_the_top_of_the_run_folder(tmp_path):
    assert files.write(tmp_path, files.REPORT, "<html></html>") == tmp_path / "report.html"
    assert files.read(tmp_path, files.REPORT) == "<html></html>"
    assert files.read(tmp_path / "nothing", files.REPORT, missing_ok=True) == ""
    assert files.METRICS_DOC.path(tmp_path) == tmp_path / "metrics.json"
    assert files.ANALYSIS_FIGURES["pareto"].path(tmp_path) == tmp_path / "07_analysis" / "pareto.png"


def _stage_06_outputs(rdir) -> None:
    """What stage 06 hands on, for two variants on eight prompts (the third variant not available)."""
    rows = []
    for v, safe in (("base", [True, False] * 4), ("sft", [True] * 8)):
        for i, ok in enumerate(safe):
            rows.append({"variant": v, "prompt_id": f"{i:03d}", "category": "c", "level": "1",
                         "expected_action": ["refuse", "comply"][i % 2], "prompt": f"prompt {i}", "cot": "",
                         "answer": "no", "cited": ["c.1"] if v == "sft" else [],
                         "cited_categories": ["c"] * (v == "sft"),
                         "safe": ok, "not_overrefused": not ok, "correct_action": ok, "unclear": False,
                         "style_ok": ok, "cites_right_category": v == "sft", "cites_applicable_level": v == "sft",
                         "well_formed": True, "answered": True, "truncated": False, "cot_tokens": 3,
                         "completion_tokens": 9, "latency_s": 0.1, "error": None})
    answers = pd.DataFrame(rows)
    defs = metrics.heldout_metrics(answers)
    table, diffs = metrics.bootstrap_metrics(answers, defs, 50, 0, pairs=[("sft", "base")])
    files.write(rdir, files.ANSWERS, answers)
    files.write(rdir, files.METRICS, table)
    files.write(rdir, files.DIFFERENCES, diffs)
    files.write(rdir, files.DEFINITIONS, metrics.metric_definitions(defs))
    files.write(rdir, files.VARIANTS, pd.DataFrame([
        {"variant": "base", "label": "base", "model": "m", "system_prompt": "none", "available": True, "reason": ""},
        {"variant": "sft", "label": "SFT", "model": "m", "system_prompt": "none", "available": True, "reason": ""},
        {"variant": "sft_rl", "label": "SFT+RL", "model": "", "system_prompt": "none", "available": False,
         "reason": "not available: stage 05 has not run"}]))
    files.write(rdir, files.EVALUATION, {"prompts": 8, "resamples": 50, "confidence": 0.95, "seed": 0,
                                         "variants_not_available": {"sft_rl": "not available: stage 05 has not run"}})


def test_stage_07_runs_from_stage_06_files_alone(tmp_path):
    from delib.stages import s07_analysis

    params = validate_params({"run_name": "r", "outputs_dir": str(tmp_path)}, "test")
    rdir = tmp_path / "r"
    _stage_06_outputs(rdir)
    result = s07_analysis.run(params)
    assert result["files"] == ["metrics.json", "report.html"] and result["variants"] == ["base", "sft", "sft_rl"]
    doc = json.loads((rdir / "metrics.json").read_text())
    assert set(doc["metrics"]) == {"base", "sft"} and doc["metrics"]["sft"]["not_unsafe"]["n"] == 4
    assert any("SFT+RL (sft_rl)" in f for f in doc["findings"])
    assert "not available: stage 05 has not run" in (rdir / "report.html").read_text()
    assert {"metrics", "pareto", "differences", "citations", "by_category", "judge_scores", "training"} <= \
        set(result["figures"])
    assert all(files.ANALYSIS_FIGURES[name].path(rdir).is_file() for name in result["figures"])
