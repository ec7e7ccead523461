"""A stage run as its notebook (papermill) and as its module's `run()` (no Jupyter) writes the same files with the
same columns. Stages 01-03 and 06-07 on a deterministic OpenAI-compatible server on loopback (tests/fault_server.py);
stages 04-05 train the real model: nbval runs their notebooks and tests/test_any_spec.py their modules."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultConfig, FaultServer  # noqa: E402

from delib.run.runner import run  # noqa: E402

STAGES = ("01_policy", "02_generate", "03_judge", "06_evaluate", "07_analysis")


def tables(rdir: Path) -> dict[str, list[str]]:
    """Every file of the run but the engine's own (executed notebooks, logs), with a table's columns."""
    found = {}
    for path in sorted(p for p in rdir.rglob("*") if p.is_file()):
        name = str(path.relative_to(rdir))
        if path.suffix in (".ipynb", ".log"):
            continue
        columns = []
        if path.suffix == ".csv":
            columns = list(pd.read_csv(path).columns)
        elif path.suffix == ".jsonl" and path.stat().st_size:
            columns = list(pd.read_json(path, lines=True).columns)
        found[name] = columns
    return found


@pytest.mark.pipeline
def test_a_stage_run_as_its_notebook_or_as_python_writes_the_same_files_with_the_same_columns(tmp_path, root,
                                                                                              monkeypatch):
    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.chdir(root)
    made = {}
    with FaultServer(FaultConfig(stage_replies=True)) as server:
        role = {"backend": "openai_compatible", "model": "fake", "base_url": server.base_url}
        for engine in ("notebook", "python"):
            recipe = {"run_name": engine, "outputs_dir": str(tmp_path / "outputs"), "cache": {"enabled": False},
                      "models": {"generator": role, "judge": role, "policy": role},
                      "generate": {"max_prompts": 3, "samples_per_prompt": 2, "structured": "off"},
                      "judge": {"max_prompts": 3},
                      "evaluate": {"max_prompts": 4, "bootstrap_resamples": 50, "variants": ["base", "spec_prompt"]}}
            params_file = tmp_path / f"{engine}.yaml"
            params_file.write_text(yaml.safe_dump(recipe))
            made[engine] = run(params_file, stages="01-03,06-07", engine=engine, log=lambda s: None)
    assert (made["notebook"] / "03_judge.ipynb").is_file() and not (made["python"] / "03_judge.ipynb").exists()
    notebook, python = tables(made["notebook"]), tables(made["python"])
    assert notebook == python
    for stage in STAGES:
        assert any(name.startswith(f"{stage}/") for name in python), f"{stage} wrote nothing"
    assert python["02_generate/samples.jsonl"] and python["06_evaluate/metrics.csv"]
    assert "metrics.json" in python and "report.html" in python
