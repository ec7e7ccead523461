"""The model client against a fault-injecting OpenAI-compatible server on loopback (tests/fault_server.py):
every request ends with one result or one recorded failure, a SIGKILLed run loses no finished call, and the
Batch API path maps results back and resumes an interrupted batch."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from delib.models import ChatRequest, ModelCallsFailed, ModelClient
from delib.models.batch import BatchTimeout
from delib.models.requests import sample_seed
from delib.run.config import CacheParams, ModelRole

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultConfig, FaultServer  # noqa: E402

LIB = Path(__file__).resolve().parents[1] / "lib"


class Score(BaseModel):
    score: int = Field(ge=0, le=10)


def role_for(server: FaultServer, **kw) -> ModelRole:
    return ModelRole(backend="openai_compatible", model="fake", base_url=server.base_url, **kw)


def ask(i: int, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], meta={"i": i}, **kw)


def test_every_request_ends_once_under_faults(tmp_path):
    faults = FaultConfig(latency_s=0.005, rate_429=0.04, rate_500=0.04, rate_hang=0.04, rate_malformed=0.04,
                         rate_drop=0.04, hang_s=3.0, retry_after_s=0.01, seed=1)
    n = 300
    with FaultServer(faults) as server:
        role = role_for(server, max_concurrency=16, timeout_s=0.3, max_retries=8)
        with ModelClient(role, "generator", CacheParams(path=str(tmp_path / "c.sqlite")), seed=0,
                         run_dir=tmp_path, stage="02_generate", backoff_base_s=0.005, progress=False) as client:
            results = client.chat_many([ask(i) for i in range(n)])
            stats = server.stats()
    assert len(results) == n and [r.meta["i"] for r in results] == list(range(n))
    assert len({r.key for r in results}) == n  # no request lost or merged
    assert sum(stats["faults"].values()) >= 0.15 * n  # the faults really happened, of every kind
    assert set(stats["faults"]) == {"429", "500", "hang", "malformed", "drop"}
    ok = [r for r in results if r.ok]
    assert len(ok) == n  # 8 retries at 20% faults: every request gets through
    assert all(r.text == f"echo seed={sample_seed(0, ask(r.meta['i']).messages, 0)}: question {r.meta['i']}" for r in ok)
    assert max(stats["ok_by_body"].values()) == 1  # nothing answered twice: no duplicate call
    assert stats["ok"] == len(ok)
    # no attempt the client does not count (a hidden retry would make the server receive more); an attempt may
    # reach it less often: on a loaded machine the 0.3 s timeout can pass before the server reads the request
    assert stats["received"] <= sum(r.attempts for r in results)


def test_persistent_failures_are_recorded_with_their_error(tmp_path):
    with FaultServer(FaultConfig(rate_500=1.0)) as server:
        role = role_for(server, max_retries=2, max_concurrency=4)
        with ModelClient(role, "judge", CacheParams(enabled=False), run_dir=tmp_path, stage="03_judge",
                         backoff_base_s=0.001, progress=False) as client:
            with pytest.raises(ModelCallsFailed, match="10 of 10 requests failed") as stopped:
                client.chat_many([ask(i) for i in range(10)])
            results = stopped.value.results
        assert server.stats()["received"] == 30
    assert all(r.error.startswith("server_error") and r.attempts == 3 for r in results)
    assert client.last_usage.failures == 10


def test_server_rejecting_json_schema_gets_json_object(tmp_path):
    with FaultServer(FaultConfig(reject_json_schema=True)) as server:
        with ModelClient(role_for(server), "judge", CacheParams(enabled=False), progress=False) as client:
            results = client.chat_many([ChatRequest([{"role": "user", "content": 'REPLY:{"score": 4}'}],
                                                    response_model=Score, sample_index=i) for i in range(3)])
        kinds = [b.get("response_format", {}).get("type") for b in server.state.bodies]
    assert [r.parsed for r in results] == [Score(score=4)] * 3
    assert kinds.count("json_object") == 3  # each request answered once, as json_object
    assert 1 <= kinds.count("json_schema") <= 3  # only the calls in flight when the first 500 came were refused
    assert kinds[0] == "json_schema" and kinds[-1] == "json_object"
    assert "schema" in server.state.bodies[-1]["response_format"]


CHILD = """
import sys
sys.path.insert(0, {lib!r})
from delib.run.config import CacheParams, ModelRole
from delib.models import ChatRequest, ModelClient
role = ModelRole(backend="openai_compatible", model="fake", base_url={url!r}, max_concurrency=4)
client = ModelClient(role, "generator", CacheParams(path={cache!r}), progress=False)
client.chat_many([ChatRequest([{{"role": "user", "content": f"q{{i}}"}}]) for i in range({n})])
print("finished", flush=True)
"""


def test_sigkill_loses_no_finished_call(tmp_path):
    n, cache = 200, tmp_path / "cache.sqlite"
    with FaultServer(FaultConfig(latency_s=0.02)) as server:
        script = tmp_path / "child.py"
        script.write_text(CHILD.format(lib=str(LIB), url=server.base_url, cache=str(cache), n=n))
        child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while server.stats()["ok"] < 60 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        answered_before = server.stats()["ok"]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        answered = server.stats()["ok"]
        assert 60 <= answered_before and answered < n, "the child was not killed mid-run"
        with sqlite3.connect(cache) as db:
            kept = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        assert answered_before - 4 <= kept <= answered  # at most the 4 calls in flight are lost

        server.reset()
        role = ModelRole(backend="openai_compatible", model="fake", base_url=server.base_url, max_concurrency=4)
        with ModelClient(role, "generator", CacheParams(path=str(cache)), progress=False) as client:
            results = client.chat_many([ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(n)])
        assert all(r.ok for r in results)
        assert sum(r.cached for r in results) == kept
        assert server.stats()["received"] == n - kept  # the re-run made only the missing calls


# ------------------------------------------------------------------------------------------ Batch API


def batch_client(server, tmp_path, **kw) -> ModelClient:
    return ModelClient(role_for(server, **kw), "judge", CacheParams(path=str(tmp_path / "c.sqlite")), seed=3,
                       run_dir=tmp_path, stage="03_judge", progress=False)


def test_batch_maps_results_back_by_custom_id(tmp_path):
    with FaultServer(FaultConfig(batch_polls_to_complete=2)) as server:
        with batch_client(server, tmp_path) as client:
            requests = [ask(i) for i in range(20)] + [ChatRequest([{"role": "user", "content": 'REPLY:{"score": 9}'}],
                                                                  response_model=Score)]
            results = client.chat_many(requests, batch=True, batch_poll_s=0.01)
        stats = server.stats()
    assert stats["batch_creates"] == 1 and stats["received"] == 0  # everything went through the batch
    assert [r.text for r in results[:20]] == [f"echo seed={sample_seed(3, ask(i).messages, 0)}: question {i}"
                                              for i in range(20)]
    assert results[20].parsed == Score(score=9)
    state = list((tmp_path / "03_judge" / "batches").glob("judge-*.json"))
    assert len(state) == 1 and '"batch_id": "batch-1"' in state[0].read_text()
    jsonl = state[0].with_suffix(".jsonl").read_text().splitlines()
    assert len(jsonl) == 21 and {line.split('"custom_id": "')[1][:64] for line in jsonl} == {r.key for r in results}


def test_interrupted_batch_is_resumed_not_created_again(tmp_path):
    with FaultServer(FaultConfig(batch_polls_to_complete=4)) as server:
        with batch_client(server, tmp_path) as client:
            with pytest.raises(BatchTimeout, match="re-run the stage"):
                client.chat_many([ask(i) for i in range(5)], batch=True, batch_poll_s=0.01, batch_timeout_s=0.0)
        assert server.stats()["batch_creates"] == 1
        with batch_client(server, tmp_path) as client:  # a new run of the stage
            results = client.chat_many([ask(i) for i in range(5)], batch=True, batch_poll_s=0.01)
        assert server.stats()["batch_creates"] == 1
    assert all(r.ok for r in results)


def test_failed_batch_lines_fall_back_to_live_calls(tmp_path):
    with FaultServer(FaultConfig(batch_line_error_rate=0.3, seed=5)) as server:
        with batch_client(server, tmp_path) as client:
            results = client.chat_many([ask(i) for i in range(30)], batch=True, batch_poll_s=0.01)
        stats = server.stats()
    assert all(r.ok for r in results)
    assert 0 < stats["received"] < 30 and stats["ok"] == 30  # the failed lines, and only they, were called live
