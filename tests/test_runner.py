"""The runner and the `delib` command line, on tiny real notebooks executed by papermill."""
import json

import pytest

from delib import cli
from delib.run.config import ParamsError
from delib.run.runner import StageFailed, UsageError, parse_stages, run


def notebook(*sources: str, params: str = "recipe = 'params/p.yaml'\nrun_name = None") -> dict:
    cells = [{"id": "params", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": params,
              "outputs": [], "execution_count": None}]
    cells += [{"id": f"c{i}", "cell_type": "code", "metadata": {}, "source": s, "outputs": [],
               "execution_count": None} for i, s in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


WRITE = """from delib.run import config, paths
params = config.from_namespace(globals())
(paths.stage_dir(params, "{stage}") / "out.txt").write_text(str(params.seed))"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with params/ and notebooks/: 01 writes a file, 02 reads it and writes its own."""
    (tmp_path / "params").mkdir()
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "01_policy.ipynb").write_text(json.dumps(notebook(WRITE.format(stage="01_policy"))))
    (nbs / "02_generate.ipynb").write_text(json.dumps(notebook(
        WRITE.format(stage="02_generate"), "assert (paths.stage_dir(params, '01_policy') / 'out.txt').exists()")))
    (tmp_path / "params" / "p.yaml").write_text("run_name: t1\nseed: 7\n")
    templates = tuple(f"specs/default/templates/{t}.txt" for t in ("generator", "judge", "grader", "strongreject"))
    for named in ("specs/default/spec.md", "specs/default/examples.yaml", "prompts/default.csv",
                  "prompts/default_test.csv", *templates):  # the default
        (tmp_path / named).parent.mkdir(parents=True, exist_ok=True)  # recipe's files, checked before a run
        (tmp_path / named).write_text("")
    monkeypatch.setenv("DELIB_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_parse_stages():
    assert parse_stages("02-03") == ["02_generate", "03_judge"]
    assert parse_stages("judge,1") == ["01_policy", "03_judge"]
    assert parse_stages("05_rl") == ["05_rl"]
    assert len(parse_stages(None)) == 7
    with pytest.raises(UsageError, match="unknown stage 'train'"):
        parse_stages("train")
    with pytest.raises(UsageError, match="backwards"):
        parse_stages("03-01")


@pytest.mark.pipeline
def test_run_resume_and_manifest(project):
    logs = []
    rdir = run("params/p.yaml", stages="01-02", log=logs.append)
    assert (rdir / "01_policy" / "out.txt").read_text() == "7"
    assert (rdir / "02_generate.ipynb").is_file()
    m = json.loads((rdir / "manifest.json").read_text())
    assert m["status"] == "ok" and m["params"]["seed"] == 7
    assert [m["stages"][s]["status"] for s in ("01_policy", "02_generate")] == ["ok", "ok"]
    assert m["stages"]["01_policy"]["duration_s"] > 0
    assert set(m["git"]) == {"commit", "dirty"} and "papermill" in m["packages"]
    assert m["models"]["generator"]["backend"] == "embedded"
    assert any("[1/2] 01_policy: ok" in line for line in logs)

    # an existing run folder is never overwritten silently
    with pytest.raises(UsageError, match="already exists"):
        run("params/p.yaml", stages="01-02")
    # resume skips what is up to date
    logs.clear()
    run("params/p.yaml", stages="01-02", resume=True, log=logs.append)
    assert all("up to date, skipped" in line for line in logs) and len(logs) == 2
    # a params change that stage 01 reads re-runs it, and so 02, whose input changed
    (project / "params" / "p.yaml").write_text("run_name: t1\nseed: 8\n")
    logs.clear()
    run("params/p.yaml", stages="01-02", resume=True, log=logs.append)
    assert sum("running" in line for line in logs) == 2
    assert (rdir / "02_generate" / "out.txt").read_text() == "8"
    # a change to another stage's section leaves stage 01 alone
    (project / "params" / "p.yaml").write_text("run_name: t1\nseed: 8\ngenerate: {samples_per_prompt: 3}\n")
    logs.clear()
    run("params/p.yaml", stages="01-02", resume=True, log=logs.append)
    assert [line.split(": ")[1] for line in logs if "01_policy" in line] == ["up to date, skipped"]
    assert any("02_generate: ok" in line for line in logs)


@pytest.mark.pipeline
def test_failing_stage_names_notebook_and_cell(project, capsys):
    (project / "notebooks" / "02_generate.ipynb").write_text(json.dumps(notebook("x = 1", "raise ValueError('boom')")))
    with pytest.raises(StageFailed) as e:
        run("params/p.yaml", stages="01-02")
    assert e.value.stage == "02_generate"
    assert "cell 4 of the executed notebook" in str(e.value)  # after papermill's injected-parameters cell
    assert "raise ValueError('boom')" in str(e.value) and "raised ValueError: boom" in str(e.value)
    assert str(project / "outputs" / "t1" / "02_generate.ipynb") in str(e.value)
    m = json.loads((project / "outputs" / "t1" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"]["02_generate"]["status"] == "failed"
    assert cli.main(["run", "params/p.yaml", "--stages", "02", "--force"]) == 1
    assert "stage 02_generate failed" in capsys.readouterr().err


def cli_error(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_exit_2_with_one_line(project, capsys):
    p = project / "params"
    assert "params file not found" in cli_error(capsys, "run", "params/missing.yaml")
    (p / "syntax.yaml").write_text("run_name: x\nseed: [1,\n")
    assert "syntax.yaml:3: YAML syntax error" in cli_error(capsys, "run", "params/syntax.yaml")
    (p / "unknown.yaml").write_text("run_name: x\nsed: 1\n")
    assert "unknown.yaml:2: sed: unknown key" in cli_error(capsys, "run", "params/unknown.yaml")
    (p / "type.yaml").write_text("run_name: x\nseed: many\n")
    assert "type.yaml:2: seed:" in cli_error(capsys, "run", "params/type.yaml")
    (p / "sep.yaml").write_text("run_name: a/b\n")
    assert "path separator" in cli_error(capsys, "run", "params/sep.yaml")
    assert "unknown stage 'teach'" in cli_error(capsys, "run", "params/p.yaml", "--stages", "teach")
    (project / "blocker").write_text("a file where a folder should be")
    (p / "unwritable.yaml").write_text("run_name: x\noutputs_dir: blocker/outputs\n")
    assert "is not writable" in cli_error(capsys, "run", "params/unwritable.yaml", "--stages", "01")
    assert not (project / "outputs").exists()  # nothing ran


@pytest.mark.pipeline
def test_existing_run_folder_needs_resume_or_force(project, capsys):
    assert cli.main(["run", "params/p.yaml", "--stages", "01"]) == 0
    assert "already exists" in cli_error(capsys, "run", "params/p.yaml", "--stages", "01")
    assert cli.main(["run", "params/p.yaml", "--stages", "01", "--force"]) == 0


@pytest.mark.pipeline
def test_a_stage_whose_requests_all_fail_stops_with_the_cause(tmp_path, root, monkeypatch):
    """The real stage 02 against a closed loopback port: exit 1 naming the role, the count and the error, and no
    stage 03 left to crash on an empty table."""
    from delib.models.servers import free_port

    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.chdir(root)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: down\noutputs_dir: {tmp_path / 'outputs'}\ncache: {{enabled: false}}\n"
                      f"generate: {{max_prompts: 2, samples_per_prompt: 1, prestart_think: false}}\n"
                      f"models:\n  generator: {{backend: openai_compatible, base_url: '{closed}', model: m, "
                      f"max_retries: 0}}\n")
    with pytest.raises(StageFailed) as failed:  # past the preflight check, which would stop it before stage 01
        run(params, stages="01-03", log=lambda s: None, check=False)
    message = str(failed.value)
    assert failed.value.stage == "02_generate" and "ModelCallsFailed" in message
    assert "generator (openai_compatible, model 'm'): 2 of 2 requests failed; the first: connection" in message
    assert not (tmp_path / "outputs" / "down" / "03_judge").exists()


USE = """from delib.run import config, paths
from delib.models.usage import Usage, add_usage
params = config.from_namespace(globals())
add_usage(paths.stage_dir(params, "01_policy"), "generator", Usage(requests=4, prompt_tokens=100))"""


@pytest.mark.pipeline
def test_a_forced_rerun_replaces_a_stages_usage_never_adds(project):
    (project / "notebooks" / "01_policy.ipynb").write_text(json.dumps(notebook(USE)))
    for flags in ({}, {"force": True}, {"force": True}):
        rdir = run("params/p.yaml", stages="01", log=lambda s: None, **flags)
    usage = json.loads((rdir / "01_policy" / "usage.json").read_text())
    assert usage["generator"]["requests"] == 4 and usage["generator"]["prompt_tokens"] == 100
    manifest = json.loads((rdir / "manifest.json").read_text())
    assert manifest["usage"]["per_role"]["generator"]["requests"] == 4


def test_a_missing_named_file_stops_before_anything_runs(project):
    (project / "params" / "p.yaml").write_text("run_name: t2\nspec:\n  path: specs/nope.md\nprompts:\n  sets:\n"
                                                "    - {path: prompts/default.csv}\n    - {path: prompts/gone.csv}\n")
    with pytest.raises(ParamsError) as e:
        run("params/p.yaml", log=lambda s: None)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("params/p.yaml:3: spec.path: file not found: ") and lines[0].endswith("specs/nope.md")
    assert lines[1].startswith("params/p.yaml:7: prompts.sets.1.path: file not found: ") and len(lines) == 2
    assert not (project / "outputs" / "t2").exists()


@pytest.mark.pipeline
def test_papermill_alone_refuses_an_unknown_parameter_in_one_line(project):
    """`papermill NB OUT -p judge ...` (no `delib run` to validate first): the notebook stops at its params cell
    with one line naming the key and what a notebook takes instead, not a traceback."""
    import papermill

    nb = project / "notebooks" / "01_policy.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(nb), str(project / "out.ipynb"), parameters={"judge": {"k": 1}},
                                   kernel_name="python3", progress_bar=False)
    assert e.value.ename == "ParamsError"
    said = ("notebook parameters: judge: unknown key; a stage notebook takes a recipe, not its keys: "
            "papermill NB OUT -p recipe params/default.yaml")
    assert e.value.evalue == said and e.value.traceback == [f"ParamsError: {said}"]


def test_a_corrupt_cache_or_a_missing_adapter_stops_before_anything_runs(project):
    (project / "bad.sqlite").write_bytes(b"this is not a database, not even close" * 100)
    (project / "params" / "p.yaml").write_text("run_name: t3\ncache:\n  path: bad.sqlite\nmodels:\n  policy:\n"
                                                "    adapter: outputs/old/adapter.gguf\n")
    with pytest.raises(ParamsError) as e:
        run("params/p.yaml", log=lambda s: None)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("params/p.yaml:6: models.policy.adapter: file not found: ")
    assert lines[1].startswith("params/p.yaml:3: cache.path: ") and "bad.sqlite: the model-call cache is not" in lines[1]
    assert not (project / "outputs" / "t3").exists()


def test_resume_reruns_a_stage_when_a_file_it_may_read_changes(project):
    """The validity sets are optional (the report says when they are absent) but still part of the fingerprint of
    the stages that read them: a changed file makes --resume run stage 06 again, and not stage 01."""
    from delib.run.config import load_params
    from delib.run.runner import fingerprint

    labels = project / "labels.csv"
    labels.write_text("a,b\n1,2\n")
    (project / "params" / "p.yaml").write_text(f"run_name: t4\nevaluate:\n  validity_xstest: {labels}\n")
    params = load_params(project / "params" / "p.yaml")
    nb = project / "notebooks" / "01_policy.ipynb"
    rdir = project / "outputs" / "t4"
    before = {stage: fingerprint(stage, params, nb, rdir) for stage in ("01_policy", "06_evaluate")}
    labels.write_text("a,b\n1,3\n")
    assert fingerprint("06_evaluate", params, nb, rdir) != before["06_evaluate"]
    assert fingerprint("01_policy", params, nb, rdir) == before["01_policy"]  # only 06-07 read them


def test_preflight_stops_a_run_whose_server_is_down_before_anything_runs(tmp_path, root, monkeypatch, capsys):
    from delib.models.servers import free_port

    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.chdir(root)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: down\noutputs_dir: {tmp_path / 'outputs'}\n"
                      f"models:\n  generator: {{backend: openai_compatible, base_url: '{closed}', model: m}}\n")
    assert cli.main(["run", str(params), "--stages", "01-03"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: preflight: models.generator: no server answers at {closed} (")
    assert err[-1] == "(nothing was run; --no-preflight skips these checks)" and len(err) == 2
    assert not (tmp_path / "outputs" / "down").exists()


def test_preflight_names_a_refused_key_and_an_unserved_model_without_echoing_the_key(tmp_path, root, monkeypatch):
    from delib.run.config import validate_params
    from delib.run.preflight import preflight
    from fault_server import FaultConfig, FaultServer

    secret = "sk-test-preflight-0123456789abcdef"
    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.setenv("GOOD_KEY", secret)
    monkeypatch.setenv("BAD_KEY", secret[::-1])
    with FaultServer(FaultConfig(api_key=secret)) as srv:
        role = {"backend": "openai_compatible", "base_url": srv.base_url}
        params = validate_params({"run_name": "x", "models": {
            "generator": {**role, "model": "fake", "api_key_env": "GOOD_KEY"},  # fine
            "judge": {**role, "model": "fake", "api_key_env": "BAD_KEY"},
            "policy": {**role, "model": "misspelt", "api_key_env": "GOOD_KEY"}}})
        problems = preflight(params, ["02_generate", "03_judge", "06_evaluate"], env_file=tmp_path / ".env")
    assert problems == [f"models.judge: {srv.base_url} refused the API key (HTTP 401): check BAD_KEY",
                        f"models.policy: model 'misspelt' is not served at {srv.base_url} (served: 'fake')"]
    assert secret not in "\n".join(problems) and secret[::-1] not in "\n".join(problems)
    params = validate_params({"run_name": "x", "models": {"judge": {"backend": "openai", "model": "gpt-4o-mini",
                                                                    "api_key_env": "NOT_SET_ANYWHERE"}}})
    assert preflight(params, ["03_judge"], env_file=tmp_path / ".env") == [
        f"models.judge: no API key: set the environment variable NOT_SET_ANYWHERE (or put `NOT_SET_ANYWHERE=...` "
        f"in {tmp_path / '.env'})"]


def test_the_gpu_recipe_is_refused_on_a_machine_without_its_gpus_server_and_deepspeed(root, monkeypatch):
    import importlib.util

    from delib.run import preflight as pf
    from delib.run.config import load_params

    if pf.cuda_devices() >= 4 or importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("this machine has what params/gpu_example.yaml needs")
    monkeypatch.setenv("DELIB_ROOT", str(root))
    monkeypatch.setattr(pf, "TIMEOUT_S", 2.0)
    params = load_params(root / "params" / "gpu_example.yaml")
    problems = pf.preflight(params, list(pf.st.STAGES))
    assert any(p.startswith("sft.num_processes: 4 processes need as many GPUs; torch sees 0") for p in problems)
    assert any(p.startswith("sft.deepspeed: configured, but the deepspeed package is not installed") for p in problems)
    import socket

    with socket.socket() as s:
        nothing_on_8000 = s.connect_ex(("127.0.0.1", 8000)) != 0
    if nothing_on_8000:
        # stage 01 comes first and may label prompts with the judge; the other roles share its server and model
        assert problems[0].startswith("models.judge: no server answers at http://127.0.0.1:8000/v1 (")
        assert len([p for p in problems if p.startswith("models.")]) == 1  # one server and model: asked once


def test_a_key_pasted_into_api_key_env_never_reaches_stderr_or_a_run_folder(project, capsys):
    secret = "sk-proj-pasted0123456789abcdefSECRET"
    (project / "params" / "p.yaml").write_text(f"run_name: t5\nmodels:\n  judge:\n    backend: openai_compatible\n"
                                                f"    base_url: http://127.0.0.1:9/v1\n    api_key_env: {secret}\n")
    assert cli.main(["run", "params/p.yaml"]) == 2
    captured = capsys.readouterr()
    assert "api_key_env must be the NAME of an environment variable" in captured.err
    assert secret not in captured.err + captured.out and not (project / "outputs").exists()


@pytest.mark.pipeline
def test_preflight_looks_only_at_the_stages_a_resumed_run_will_run(project, capsys):
    """Every stage up to date: --resume has nothing to ask of a server that is down now."""
    from delib.models.servers import free_port

    (project / "params" / "p.yaml").write_text(
        f"run_name: t6\nmodels:\n  generator: {{backend: openai_compatible, base_url: "
        f"'http://127.0.0.1:{free_port()}/v1', model: m}}\n")
    run("params/p.yaml", stages="01-02", log=lambda s: None, check=False)
    assert cli.main(["run", "params/p.yaml", "--stages", "01-02", "--resume"]) == 0  # nothing left to run
    assert cli.main(["run", "params/p.yaml", "--stages", "01-02", "--force"]) == 2  # stage 02 would call it
    assert "preflight: models.generator: no server answers at" in capsys.readouterr().err
