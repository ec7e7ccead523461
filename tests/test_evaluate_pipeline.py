"""Stages 06 and 07 end to end through the runner, as Python (tests/test_engines.py checks that the notebooks write
the same files), the policy served by a deterministic OpenAI-compatible server on loopback (tests/fault_server.py), the trained stages
absent."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultConfig, FaultServer  # noqa: E402

from delib.run.runner import run  # noqa: E402


def run_on_a_fake_server(tmp_path: Path, recipe: dict) -> Path:
    """Stages 01 and 06-07 of `recipe` with the policy (and any role naming "SERVER") on a fake loopback server."""
    with FaultServer(FaultConfig()) as server:
        policy = {"backend": "openai_compatible", "model": "fake", "base_url": server.base_url}
        text = yaml.safe_dump({"outputs_dir": str(tmp_path / "outputs"), "cache": {"enabled": False},
                               "models": {"policy": policy}, **recipe}).replace("SERVER", server.base_url)
        params_file = tmp_path / "p.yaml"
        params_file.write_text(text)
        return run(params_file, stages="01,06-07", log=lambda s: None, engine="python")


@pytest.fixture
def at_the_root(root, monkeypatch):
    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.chdir(root)


@pytest.mark.pipeline
def test_evaluate_and_report_with_an_extra_model(tmp_path, at_the_root):
    rdir = run_on_a_fake_server(tmp_path, {
        "run_name": "pipe",
        "evaluate": {"max_prompts": 7, "bootstrap_resamples": 200, "variants": ["base", "sft", "sft_rl"],
                     "extra_models": {"echo": {"backend": "openai_compatible", "model": "fake",
                                               "base_url": "SERVER"}}}})

    doc = json.loads((rdir / "metrics.json").read_text())
    # the two served variants and the chance references of citation; nothing for the untrained ones
    assert set(doc["metrics"]) == {"base", "echo", "chance_first", "chance_uniform"}
    assert set(doc["chance"]) == {"chance_first", "chance_uniform"}
    assert {k.split("[")[0] for k in doc["chance"]["chance_first"]} == {"citation_accuracy"}
    assert doc["evaluation"]["variants_not_available"] == {"sft": "not available: stage 04 has not run",
                                                           "sft_rl": "not available: stage 05 has not run"}
    m = doc["metrics"]["echo"]
    assert m["format_adherence"] == {"value": 0.0, "lo": 0.0, "hi": 0.0, "n": 7}  # an echo has no <think>
    assert m["not_unsafe"]["n"] + m["not_overrefuse"]["n"] == 7
    assert any(f.startswith("Not evaluated: SFT (sft)") for f in doc["findings"])
    # the same server answered both variants with the same echo: no difference may be called significant
    assert not any(d["significant"] for d in doc["differences"] if d["kind"] == "rate")
    page = (rdir / "report.html").read_text()
    assert "not available: stage 05 has not run" in page and "data:image/png;base64," in page
    assert "import " not in page
    manifest = json.loads((rdir / "manifest.json").read_text())
    assert {s: v["status"] for s, v in manifest["stages"].items()} == {"01_policy": "ok", "06_evaluate": "ok",
                                                                       "07_analysis": "ok"}
    from delib import stages
    from delib.run import files
    for stage in ("06", "07"):
        assert all(f.path(rdir).is_file() for f in stages.get(stage).outputs), stage
    assert all(files.EVALUATION_FIGURES[k].path(rdir).is_file() for k in ("metrics", "pareto", "differences",
                                                                            "citations"))
    assert not files.EVALUATION_FIGURES["xstest_labels"].path(rdir).exists()  # no XSTest in this recipe
    assert all(files.ANALYSIS_FIGURES[k].path(rdir).is_file() for k in ("metrics", "pareto", "differences",
                                                                          "citations", "by_category", "training"))
    variants = files.read(rdir, files.VARIANTS)
    assert variants.set_index("variant").loc["base", "reason"] == ""  # an empty text cell reads as "", not NaN
    assert files.read(rdir, files.ANSWERS)["prompt_id"].map(type).eq(str).all()


@pytest.mark.pipeline
def test_the_report_opens_with_the_papers_axes_when_both_benchmarks_ran(tmp_path, at_the_root):
    """XSTest and StrongREJECT from the shipped files, every forbidden prompt under every technique, no grader: the
    run reports strongreject_refusal@0.1 (never goodness), draws StrongREJECT against XSTest, and the report opens
    with that figure. The policy's server decodes no grammar, so the skeleton baselines say why they are absent."""
    rdir = run_on_a_fake_server(tmp_path, {
        "run_name": "paper",
        "prompts": {"xstest_path": "prompts/benchmarks/xstest/xstest_prompts.csv",
                    "strongreject_path": "prompts/benchmarks/strongreject/strongreject_small_dataset.csv"},
        "evaluate": {"max_prompts": 4, "bootstrap_resamples": 100, "benchmark_max_prompts": 3}})

    from delib.run import files
    doc = json.loads((rdir / "metrics.json").read_text())
    keys = set(doc["metrics"]["base"])
    assert {"strongreject_refusal@0.1", "xstest_not_overrefuse"} <= keys and "strongreject_goodness@0.1" not in keys
    assert "takes none" in doc["evaluation"]["variants_not_available"]["base_skeleton"]
    sr = files.read(rdir, files.STRONGREJECT_ANSWERS)
    assert sr.groupby("forbidden_id")["technique"].nunique().eq(9).all() and sr["forbidden_id"].nunique() == 3
    assert files.ANALYSIS_FIGURES["pareto_paper"].path(rdir).is_file()
    page = (rdir / "report.html").read_text()
    assert page.index("StrongREJECT refusal@0.1 (rules only) against XSTest") < page.index(
        "paired differences on the figure&#x27;s axes") < page.index("Headline metrics")
