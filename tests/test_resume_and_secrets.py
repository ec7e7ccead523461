"""`delib run` as a user runs it, against a fake OpenAI-compatible server on loopback (tests/fault_server.py):
a run SIGKILLed in the middle of stage 02 and again of stage 06 resumes making only the calls its cache lacks and
ends as an uninterrupted run does; an API key that every role sends is written nowhere."""
from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pandas as pd
import psutil
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultConfig, FaultServer, body_hash  # noqa: E402

CONCURRENCY = 2  # calls in flight per role: the most a kill can lose
VARYING_COLUMNS = ["latency_s", "cached"]  # what differs between a resumed and an uninterrupted run, legitimately


def fake_role(server: FaultServer, **kw) -> dict:
    return {"backend": "openai_compatible", "base_url": server.base_url, "model": "fake",
            "max_concurrency": CONCURRENCY, **kw}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def delib_run(params: Path, root: Path, log: Path, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """`delib run` in a session of its own, as from a terminal; its stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "delib", "run", str(params), *flags], cwd=root,
                                env={**os.environ, "DELIB_ROOT": str(root), **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `delib run` and its papermill kernel (which jupyter starts in a session of its own)."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    groups = set()
    for p in tree:
        try:
            groups.add(os.getpgid(p.pid))
        except ProcessLookupError:
            pass
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    proc.wait(10)
    psutil.wait_procs(tree, timeout=10)


def exit_status(proc: subprocess.Popen, timeout_s: float = 300) -> int:
    """The exit status of a run; one still going after `timeout_s` is killed."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise


def cached_calls(cache: Path) -> dict[str, dict]:
    """Every finished call in a cache file, read as a new process reads it (a killed run leaves its WAL file),
    its latency left out."""
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT key, value FROM calls").fetchall()
    return {key: {k: v for k, v in json.loads(value).items() if k != "latency_s"} for key, value in rows}


def stage_of(body: dict) -> str:
    """The stage that sent a chat request, in a recipe whose stage 02 pre-starts every reply (the CoT after
    <think>, the answer after </think>, and any probe of whether the server continues a pre-started reply) and
    whose stage 06 pre-starts none."""
    return "02_generate" if body.get("continue_final_message") else "06_evaluate"


def answered(server: FaultServer, stage: str | None = None) -> dict[str, int]:
    """Successful answers per distinct request body since the server's last reset, of one stage or of all."""
    ok = server.stats()["ok_by_body"]
    stages = {body_hash(b): stage_of(b) for b in server.bodies()}
    return {h: n for h, n in ok.items() if stage in (None, stages[h])}


def kill_when(proc: subprocess.Popen, server: FaultServer, stage: str, calls: int, timeout_s: float = 120) -> None:
    """SIGKILL the run once the server has answered `calls` of `stage`'s requests."""
    deadline = time.monotonic() + timeout_s
    while sum(answered(server, stage).values()) < calls:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {calls} calls of {stage}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"{stage} made fewer than {calls} calls in {timeout_s} s")
        time.sleep(0.005)
    kill_tree(proc)
    while server.stats()["in_flight"] and time.monotonic() < deadline:  # answers sent as the client died count
        time.sleep(0.005)


def stage_statuses(run: Path) -> dict[str, str]:
    return {s: v["status"] for s, v in json.loads((run / "manifest.json").read_text())["stages"].items()}


def comparable(path: Path, keys: list[str]) -> pd.DataFrame:
    """A stage's table without what varies from run to run (latency, cache hits), in a fixed order."""
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        table = table[table["key"] != "latency_s"]  # the latency metric
    else:
        table = pd.read_json(path, lines=True, dtype={"prompt_id": str})
    table = table.drop(columns=[c for c in VARYING_COLUMNS if c in table.columns])
    return table.sort_values(keys).reset_index(drop=True)


@pytest.mark.pipeline
def test_a_run_killed_mid_stage_02_and_mid_stage_06_resumes_with_only_the_missing_calls_to_the_same_outputs(
        tmp_path, root):
    stages = "01-02,06"  # stage 06's base and spec_prompt variants need nothing of stages 03-05
    outputs = tmp_path / "outputs"
    with FaultServer(FaultConfig(latency_s=0.2, stage_replies=True)) as server:
        def recipe(run_name: str, cache: Path) -> Path:
            return write_recipe(tmp_path / f"{run_name}.yaml", {
                "run_name": run_name, "outputs_dir": str(outputs), "cache": {"path": str(cache)},
                # two calls a sample (the CoT, then the answer after it): 6 prompts x 2 samples x 2 calls
                "generate": {"max_prompts": 6, "samples_per_prompt": 2, "prestart_think": True, "structured": "off"},
                "evaluate": {"max_prompts": 6, "variants": ["base", "spec_prompt"], "prestart_think": False,
                             "bootstrap_resamples": 50},
                "models": {"generator": fake_role(server), "policy": fake_role(server)}})

        # the uninterrupted run, on a cache of its own, tells which calls the recipe makes
        whole_log = tmp_path / "whole.log"
        assert exit_status(delib_run(recipe("whole", tmp_path / "whole.sqlite"), root, whole_log, "--stages",
                                     stages)) == 0, whole_log.read_text()[-3000:]
        every = answered(server)
        calls = {stage: len(answered(server, stage)) for stage in ("02_generate", "06_evaluate")}
        assert set(every.values()) == {1} and len(cached_calls(tmp_path / "whole.sqlite")) == len(every)
        assert calls["02_generate"] >= 6 * 2 * 2 and calls["06_evaluate"] == 6 * 2  # 6 prompts x 2 variants

        # killed in the middle of stage 02, in its second phase (the answers after the CoTs)
        server.reset()
        cache, log = tmp_path / "cache.sqlite", tmp_path / "killed.log"
        params = recipe("killed", cache)
        # the interrupted run goes as Python (no kernel to start each stage): the uninterrupted one ran its notebooks,
        # so the comparison at the end is also one of the two engines' files
        kill_when(delib_run(params, root, log, "--stages", stages, "--engine", "python"), server, "02_generate",
                  calls["02_generate"] * 2 // 3)
        before_first_kill = answered(server)
        assert stage_statuses(outputs / "killed")["02_generate"] == "running"
        assert sum(before_first_kill.values()) < calls["02_generate"], "the kill did not land in the middle of stage 02"
        kept = len(cached_calls(cache))
        assert kept >= sum(before_first_kill.values()) - CONCURRENCY  # the kill lost at most the calls in flight

        # resumed, and killed again in the middle of stage 06: stage 02 made only the calls the cache lacked
        server.reset()
        kill_when(delib_run(params, root, log, "--stages", stages, "--resume", "--engine", "python"), server,
                  "06_evaluate",
                  calls["06_evaluate"] * 2 // 3)
        after_first_kill = answered(server)
        assert len(answered(server, "02_generate")) == calls["02_generate"] - kept
        assert set(after_first_kill.values()) == {1}
        # a call is made again only when its answer, sent as the run died, never reached the cache
        assert len(set(before_first_kill) & set(after_first_kill)) == sum(before_first_kill.values()) - kept
        assert stage_statuses(outputs / "killed")["02_generate"] == "ok"
        assert stage_statuses(outputs / "killed")["06_evaluate"] == "running"
        answered_06 = len(answered(server, "06_evaluate"))
        assert answered_06 < calls["06_evaluate"], "the kill did not land in the middle of stage 06"
        kept_06 = len(cached_calls(cache)) - calls["02_generate"]
        assert kept_06 >= answered_06 - CONCURRENCY

        # resumed to the end: stages 01 and 02 skipped, stage 06 made only its missing calls, none twice
        server.reset()
        log = tmp_path / "resumed.log"
        assert exit_status(delib_run(params, root, log, "--stages", stages, "--resume", "--engine", "python")) == 0, \
            log.read_text()[-3000:]
        last = answered(server)
        assert len(answered(server, "02_generate")) == 0
        assert len(last) == calls["06_evaluate"] - kept_06 and set(last.values()) == {1}
        assert set(before_first_kill) | set(after_first_kill) | set(last) == set(every)
    assert "01_policy: up to date, skipped" in log.read_text() and "02_generate: up to date, skipped" in log.read_text()
    assert stage_statuses(outputs / "killed") == {"01_policy": "skipped", "02_generate": "skipped", "06_evaluate": "ok"}

    # the same cache, files and tables as the uninterrupted run
    assert cached_calls(cache) == cached_calls(tmp_path / "whole.sqlite")
    for stage in ("01_policy", "02_generate", "06_evaluate"):
        assert sorted(p.name for p in (outputs / "whole" / stage).iterdir()) == \
            sorted(p.name for p in (outputs / "killed" / stage).iterdir())
    for table, keys in (("02_generate/samples.jsonl", ["prompt_id", "sample_index"]),
                        ("06_evaluate/answers.jsonl", ["variant", "prompt_id"]),
                        ("06_evaluate/metrics.csv", ["variant", "key"])):
        pd.testing.assert_frame_equal(comparable(outputs / "killed" / table, keys),
                                      comparable(outputs / "whole" / table, keys))


@pytest.mark.pipeline
def test_an_api_key_reaches_the_server_but_no_file_of_the_run_the_cache_or_the_logs_nor_the_output(tmp_path, root):
    key = "sk-test-" + secrets.token_hex(16)
    temp = tmp_path / "tmp"  # the run's temporary files land here, and are searched too
    temp.mkdir()
    with FaultServer(FaultConfig(stage_replies=True, api_key=key)) as server:
        with pytest.raises(HTTPError) as refused:  # the server does require the key
            urlopen(Request(f"{server.base_url}/chat/completions", data=b"{}", method="POST"), timeout=10)
        assert refused.value.code == 401
        server.reset()
        smoke = yaml.safe_load((root / "params" / "smoke.yaml").read_text())
        role = fake_role(server, api_key_env="OPENAI_API_KEY")
        params = write_recipe(tmp_path / "smoke.yaml", {
            **smoke, "outputs_dir": str(tmp_path / "outputs"),
            "cache": {"path": str(tmp_path / "cache" / "calls.sqlite")},
            "models": {"generator": role, "judge": role, "policy": role},
            "generate": {**smoke["generate"], "structured": "off"},  # a grammar needs the embedded generator
            "judge": {**smoke["judge"], "gates": []},  # the fake generator's CoT passes no gate: judge every sample
            "evaluate": {**smoke["evaluate"], "variants": ["base", "spec_prompt"]}})  # nothing trained (04-05)
        log = tmp_path / "delib.log"  # the command's stdout and stderr
        status = exit_status(delib_run(params, root, log, "--stages", "01-03,06-07",
                                       env={"OPENAI_API_KEY": key, "TMPDIR": str(temp)}))
        stats = server.stats()
    assert status == 0, log.read_text()[-3000:]
    assert stats["unauthorized"] == 0 and stats["ok"] > 0  # every request carried the key

    run = tmp_path / "outputs" / smoke["run_name"]
    usage = {s: json.loads((run / s / "usage.json").read_text()) for s in ("02_generate", "03_judge", "06_evaluate")}
    assert usage["02_generate"]["generator"]["requests"] and usage["03_judge"]["judge"]["requests"]
    assert usage["06_evaluate"]["base"]["requests"] and usage["06_evaluate"]["spec_prompt"]["requests"]
    searched = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    folder = run.relative_to(tmp_path).as_posix()
    assert {"delib.log", "cache/calls.sqlite", f"{folder}/manifest.json", f"{folder}/report.html"} <= set(searched)
    assert {f"{folder}/{s}.{ext}" for s in ("01_policy", "02_generate", "03_judge", "06_evaluate", "07_analysis")
            for ext in ("log", "ipynb")} <= set(searched)
    needles = (key.encode(), key.removeprefix("sk-test-").encode())
    assert sorted(name for name, data in searched.items() if any(n in data for n in needles)) == []
