"""The stage registry and the run-file module: every stage is a module with a `run`, the preflight checks every
role a stage calls (01's labeller included), and run files keep their text columns as text."""
from __future__ import annotations

import pandas as pd
import pytest

from delib import stages
from delib.run import files
from delib.run import stages as st
from delib.run.config import validate_params
from delib.run.preflight import preflight


def test_the_registry_lists_every_stage_once_with_a_module_that_runs_it_and_its_notebook(root):
    assert tuple(stages.REGISTRY) == st.STAGES
    for stage in stages.REGISTRY.values():
        assert callable(stages.module(stage).run), stage.name
        assert stages.module(stage).STAGE == stage.name
        assert (root / "notebooks" / f"{stage.name}.ipynb").is_file()
        assert stages.get(stage.number) is stages.get(stage.short) is stage
        for f in stage.outputs:
            assert f.stage == stage.name, f"{f.name} is written by {f.stage}, not {stage.name}"
        for f in stage.inputs:
            assert st.STAGES.index(f.stage) < st.STAGES.index(stage.name), f"{stage.name} reads {f.name} from later"
    with pytest.raises(KeyError, match="unknown stage 'teach'"):
        stages.get("teach")


def _role_at(url: str) -> dict:
    return {"backend": "openai_compatible", "model": "m", "base_url": url}


@pytest.mark.parametrize("label_missing", [True, False])
def test_the_preflight_of_stage_01_checks_the_judge_exactly_when_it_may_label_prompts(tmp_path, label_missing):
    from delib.models.servers import free_port

    closed = f"http://127.0.0.1:{free_port()}/v1"
    params = validate_params({"run_name": "x", "models": {"judge": _role_at(closed)},
                              "prompts": {"label_missing": label_missing}})
    problems = preflight(params, ["01_policy"], env_file=tmp_path / ".env")
    assert [p.split(":")[0] for p in problems] == (["models.judge"] if label_missing else [])


def test_the_preflight_of_stage_06_checks_the_grader_never_the_reward_judge(tmp_path, root):
    """StrongREJECT's rubric is graded by models.grader (or by the rules without one), never by the judge that
    gives the RL reward: stage 06's preflight asks for the grader, and not for the judge."""
    from delib.models.servers import free_port

    closed = f"http://127.0.0.1:{free_port()}/v1"
    sr = tmp_path / "sr.csv"
    sr.write_text("forbidden_prompt\nx\n")
    base = {"run_name": "x", "models": {"judge": _role_at(closed)}, "prompts": {"strongreject_path": str(sr)}}
    assert preflight(validate_params(base), ["06_evaluate"], env_file=tmp_path / ".env") == []
    graded = validate_params({**base, "models": {"judge": _role_at(closed), "grader": _role_at(closed)}})
    assert [p.split(":")[0] for p in preflight(graded, ["06_evaluate"], env_file=tmp_path / ".env")] == \
        ["models.grader"]


def test_a_run_file_keeps_ids_and_level_names_as_text_and_is_written_whole(tmp_path):
    table = pd.DataFrame([{"prompt_id": "007", "level": "1", "sample_index": 0},
                          {"prompt_id": "8", "level": None, "sample_index": 1}])
    path = files.write(tmp_path, files.SAMPLES, table)
    assert path == tmp_path / "02_generate" / "samples.jsonl"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # through a temporary file
    back = files.read(tmp_path, files.SAMPLES)
    assert back["prompt_id"].tolist() == ["007", "8"] and back["level"].tolist()[0] == "1"
    assert back["sample_index"].tolist() == [0, 1]
    files.write(tmp_path, files.FUNNEL, pd.DataFrame([{"step": "generated", "samples": 3}]))
    assert files.read(tmp_path, files.FUNNEL).to_dict("records") == [{"step": "generated", "samples": 3}]


def test_a_missing_run_file_names_the_stage_that_writes_it_and_an_empty_one_reads_as_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"samples.jsonl is missing: run stage 02_generate first "
                                                r"\(delib run PARAMS --stages 02\)"):
        files.read(tmp_path, files.SAMPLES)
    assert files.read(tmp_path, files.SAMPLES, missing_ok=True).empty
    assert files.read(tmp_path, files.SFT_SET, missing_ok=True) == []
    files.write(tmp_path, files.SAMPLES, pd.DataFrame())
    assert files.read(tmp_path, files.SAMPLES).empty
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    files.write(tmp_path, files.SFT_SET, rows)
    assert files.read(tmp_path, files.SFT_SET) == rows
