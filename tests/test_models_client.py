"""Unit tests of the model client with a scripted fake model: no network, no server."""
from __future__ import annotations

import asyncio
import json
import math
import signal
import sqlite3
import time
from pathlib import Path
from typing import Literal

import httpx2
import pytest
from pydantic import BaseModel, Field

from delib.models import ChatRequest, ModelAuthError, ModelCallsFailed, ModelClient, read_usage, scripted_transport
from delib.models.requests import sample_seed
from delib.models.scheduling import SHARED_LANES
from delib.models.fake import completion_body
from delib.run.config import CacheParams, ModelRole, Sampling


class Verdict(BaseModel):
    score: int = Field(ge=0, le=10)
    label: Literal["comply", "refuse"]


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture
def cache(tmp_path) -> CacheParams:
    return CacheParams(path=str(tmp_path / "cache.sqlite"))


def make(script, cache=None, role=None, tmp_path=None, **kw):
    transport = scripted_transport(script)
    client = ModelClient(role or ModelRole(), kw.pop("role_name", "generator"),
                         cache if cache is not None else CacheParams(enabled=False), seed=kw.pop("seed", 7),
                         run_dir=tmp_path, stage="02_generate" if tmp_path else None, transport=transport,
                         backoff_base_s=0.001, progress=kw.pop("progress", False), **kw)
    return client, transport


def test_results_keep_order_meta_and_seed(tmp_path):
    client, transport = make(lambda body: f"answer to {body['messages'][-1]['content']}")
    requests = [ask(f"q{i}", sample_index=i % 3, meta={"row": i}) for i in range(10)]
    results = client.chat_many(requests)
    assert [r.text for r in results] == [f"answer to q{i}" for i in range(10)]
    assert [r.meta["row"] for r in results] == list(range(10))
    assert [r.sample_index for r in results] == [i % 3 for i in range(10)]
    assert all(r.ok and not r.cached and r.attempts == 1 for r in results)
    seeds = {b["messages"][-1]["content"]: b["seed"] for b in transport.calls}
    assert seeds == {f"q{i}": sample_seed(7, ask(f"q{i}").messages, i % 3) for i in range(10)}
    client.close()


def test_neighbouring_run_seeds_and_two_prompts_share_no_sample_seed():
    """The seed of a sample is a hash of (run seed, messages, sample index): under the former run seed + sample
    index, sample 1 of seed s was sample 0 of seed s + 1, so a 3-seed sweep was not 3 independent draws."""
    samples = 8
    by_run = {run: {sample_seed(run, ask("q").messages, i) for i in range(samples)} for run in range(5)}
    assert all(len(seeds) == samples for seeds in by_run.values())
    assert all(by_run[a].isdisjoint(by_run[b]) for a in by_run for b in by_run if a < b)
    assert sample_seed(0, ask("q").messages, 0) != sample_seed(0, ask("r").messages, 0)  # two prompts of one run
    every = [sample_seed(run, ask(f"p{p}").messages, i) for run in range(20) for p in range(20) for i in range(4)]
    assert len(set(every)) == len(every) and 0 <= min(every) and max(every) < 2 ** 31  # uint32 and int64 alike
    assert sample_seed(3, ask("q").messages, 2) == sample_seed(3, ask("q").messages, 2)  # a resumed run asks alike


def test_role_seed_overrides_run_seed():
    role = ModelRole(sampling=Sampling(seed=100))
    client, transport = make(lambda body: "x", role=role)
    client.chat_many([ask("a", sample_index=2)])
    assert transport.calls[0]["seed"] == sample_seed(100, ask("a").messages, 2) != sample_seed(7, ask("a").messages, 2)


def test_cache_answers_a_rerun_without_calls(cache, tmp_path):
    client, transport = make(lambda body: f"reply {body['seed']}", cache=cache)
    first = client.chat_many([ask("hello", sample_index=i) for i in range(5)])
    client.close()
    again, transport2 = make(lambda body: pytest.fail("the model was called for a cached request"), cache=cache)
    second = again.chat_many([ask("hello", sample_index=i) for i in range(5)])
    assert [r.text for r in second] == [r.text for r in first] == [
        f"reply {sample_seed(7, ask('hello').messages, i)}" for i in range(5)]
    assert all(r.cached and r.attempts == 0 for r in second)
    assert len(transport.calls) == 5 and transport2.calls == []


def test_identical_requests_make_one_call():
    client, transport = make(lambda body: "same")
    results = client.chat_many([ask("dup", meta={"i": 1}), ask("dup", meta={"i": 2}), ask("other")])
    assert len(transport.calls) == 2
    assert results[0].key == results[1].key != results[2].key
    assert [r.meta.get("i") for r in results] == [1, 2, None]


def test_cache_key_is_what_determines_the_answer(tmp_path, monkeypatch):
    def key(role=ModelRole(), request=None, **kw):
        client, _ = make(lambda body: "x", role=role, **kw)
        return client._plan(request or ask("hi")).key

    base = key()
    assert key() == base  # stable
    assert key(request=ask("hi", sample_index=1)) != base
    assert key(request=ask("hello")) != base
    assert key(request=ask("hi", max_tokens=5)) != base
    assert key(request=ask("hi", response_model=Verdict)) != base
    assert key(request=ask("hi", logprobs=True)) != base
    assert key(role=ModelRole(sampling=Sampling(temperature=0.1))) != base
    assert key(role=ModelRole(model="other.gguf")) != base
    assert key(seed=8) != base
    adapter = tmp_path / "lora.gguf"
    adapter.write_bytes(b"adapter-1")
    with_adapter = key(role=ModelRole(adapter=str(adapter)))
    adapter.write_bytes(b"adapter-2")
    assert with_adapter != base and key(role=ModelRole(adapter=str(adapter))) != with_adapter
    # not the base URL, not the key
    monkeypatch.setenv("KEY_A", "sk-aaaaaaaaaaaa")
    monkeypatch.setenv("KEY_B", "sk-bbbbbbbbbbbb")
    a = key(role=ModelRole(backend="openai_compatible", model="m", base_url="http://a:1/v1", api_key_env="KEY_A"))
    b = key(role=ModelRole(backend="openai_compatible", model="m", base_url="http://b:2/v1", api_key_env="KEY_B"))
    assert a == b


def test_no_api_key_in_cache_or_errors(tmp_path, cache, monkeypatch):
    secret = "sk-secret-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    role = ModelRole(backend="openai", model="gpt-4o-mini")
    client, transport = make(lambda body: "fine", cache=cache, role=role, tmp_path=tmp_path)
    client.chat_many([ask("a")])
    client.close()
    raw = Path(cache.path).read_bytes() + b"".join(p.read_bytes() for p in Path(cache.path).parent.glob("*-wal"))
    assert secret.encode() not in raw
    with sqlite3.connect(cache.path) as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1
    bad, _ = make([(400, {"error": {"message": f"bad key {secret} echoed"}})], role=role)
    with pytest.raises(ModelCallsFailed) as stopped:
        bad.chat_many([ask("b")])
    result = stopped.value.results[0]
    assert result.error.startswith("bad_request") and secret not in result.error and secret not in str(stopped.value)


def test_retries_429_5xx_timeouts_and_dropped_connections():
    script = [429, 500, 503, httpx2.ReadTimeout("slow"), httpx2.RemoteProtocolError("dropped"),
              (200, b'{"choices": [', {}), "finally"]
    role = ModelRole(max_retries=6)
    client, transport = make(script, role=role)
    result = client.chat_many([ask("x")])[0]
    assert result.ok and result.text == "finally" and result.attempts == 7 and len(transport.calls) == 7


def test_retry_after_is_honoured():
    client, _ = make([(429, {"error": {"message": "slow down"}}, {"retry-after": "0.3"}), "ok"])
    start = time.monotonic()
    result = client.chat_many([ask("x")])[0]
    assert result.ok and time.monotonic() - start >= 0.3


def test_backoff_grows_exponentially_with_jitter():
    client, _ = make(lambda body: "x")
    client.backoff_base_s, client.backoff_max_s = 1.0, 30.0
    for retry in range(1, 5):
        delays = [client._backoff_s(retry, None) for _ in range(50)]
        assert 2 ** (retry - 1) * 0.5 <= min(delays) and max(delays) <= 2 ** (retry - 1)
        assert len(set(delays)) > 1  # jitter
    assert client._backoff_s(1, 5.0) >= 5.0  # Retry-After wins when longer


def test_failure_after_retries_is_recorded_not_cached(cache, tmp_path):
    role = ModelRole(max_retries=2)
    client, transport = make(lambda body: 500 if "bad" in body["messages"][-1]["content"] else "good",
                             cache=cache, role=role, tmp_path=tmp_path)
    results = client.chat_many([ask("good one"), ask("bad one"), ask("good two")])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.startswith("server_error") and results[1].attempts == 3
    assert read_usage(tmp_path / "02_generate")["generator"].failures == 1
    client.close()
    again, transport2 = make(lambda body: "recovered", cache=cache, role=role)
    results = again.chat_many([ask("good one"), ask("bad one"), ask("good two")])
    assert [r.cached for r in results] == [True, False, True] and results[1].text == "recovered"
    assert len(transport2.calls) == 1  # only the failed one is called again


def test_400_fails_fast():
    client, transport = make(lambda body: 400)
    with pytest.raises(ModelCallsFailed) as stopped:
        client.chat_many([ask("x")])
    result = stopped.value.results[0]
    assert result.error.startswith("bad_request") and result.attempts == 1 and len(transport.calls) == 1


def test_a_batch_whose_requests_all_fail_stops_with_the_cause():
    client, _ = make(lambda body: (404, {"error": {"message": "The model `gpt-typo` does not exist"}}))
    with pytest.raises(ModelCallsFailed, match=r"generator .*: 3 of 3 requests failed; the first: bad_request.*"
                                               r"does not exist"):
        client.chat_many([ask(c) for c in "abc"])


def test_more_failures_than_the_role_allows_stop_and_fewer_do_not():
    answers = iter([400, "ok", 400, 400])  # identical prompts make one call: four distinct ones here
    client, _ = make(lambda body: next(answers), role=ModelRole(max_failed_share=0.5, max_retries=0))
    with pytest.raises(ModelCallsFailed, match="3 of 4 requests failed"):
        client.chat_many([ask(c) for c in "abcd"])
    answers = iter([400, "ok", "ok", "ok"])
    client, _ = make(lambda body: next(answers), role=ModelRole(max_failed_share=0.5, max_retries=0))
    results = client.chat_many([ask(c) for c in "abcd"])
    assert [r.ok for r in results].count(False) == 1


def test_replies_that_do_not_parse_are_answers_not_failed_requests():
    client, _ = make(lambda body: "not json at all")
    results = client.chat_many([ask(c, response_model=Verdict) for c in "ab"])
    assert all(r.error.startswith("parse:") for r in results)


def test_401_stops_the_run_and_names_the_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-0000000000")
    role = ModelRole(backend="openai", model="gpt-4o-mini", max_concurrency=2)
    client, transport = make(lambda body: 401, role=role)
    with pytest.raises(ModelAuthError, match="OPENAI_API_KEY") as err:
        client.chat_many([ask(f"q{i}") for i in range(50)])
    assert len(transport.calls) <= 2  # the rest were never sent
    assert "sk-wrong" not in str(err.value)
    compat = ModelRole(backend="openai_compatible", model="m", base_url="http://x/v1")
    client, _ = make(lambda body: 401, role=compat)
    with pytest.raises(ModelAuthError, match="api_key_env"):
        client.chat_many([ask("q")])


def test_missing_key_names_the_variable_and_dotenv_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    role = ModelRole(backend="openai", model="gpt-4o-mini")
    env = tmp_path / ".env"
    client = ModelClient(role, "judge", CacheParams(enabled=False), env_file=env, progress=False)
    with pytest.raises(ModelAuthError, match="OPENAI_API_KEY"):
        client._api_key()
    env.write_text('# keys\nexport OPENAI_API_KEY="sk-from-dotenv-123"\n')
    assert client._api_key() == "sk-from-dotenv-123"
    compat = ModelRole(backend="openai_compatible", model="m", base_url="http://x/v1", api_key_env="MY_VLLM_KEY")
    client = ModelClient(compat, "judge", CacheParams(enabled=False), env_file=env, progress=False)
    with pytest.raises(ModelAuthError, match="MY_VLLM_KEY"):
        client._api_key()


def test_structured_output_validates_and_retries_invalid_replies():
    replies = iter(['{"score": 11, "label": "comply"}', "not json", '{"score": 4, "label": "refuse"}'])
    client, transport = make(lambda body: next(replies))
    result = client.chat_many([ask("judge this", response_model=Verdict)])[0]
    assert result.ok and result.parsed == Verdict(score=4, label="refuse") and result.attempts == 3
    seeds = [b["seed"] for b in transport.calls]
    assert len(set(seeds)) == 3  # each retry samples anew


def test_structured_output_gives_up_with_a_parse_failure():
    client, transport = make(lambda body: '{"score": 99, "label": "comply"}', parse_retries=2)
    result = client.chat_many([ask("judge", response_model=Verdict)])[0]
    assert result.error.startswith("parse:") and "score" in result.error
    assert result.parsed is None and result.text == '{"score": 99, "label": "comply"}'
    assert len(transport.calls) == 3


def test_structured_request_shape_per_backend(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")
    ok = lambda body: '{"score": 3, "label": "comply"}'
    embedded, t1 = make(ok)
    embedded.chat_many([ask("j", response_model=Verdict)])
    assert "grammar" in t1.calls[0] and "response_format" not in t1.calls[0]
    assert '"0" | "1"' in t1.calls[0]["grammar"]  # the score's bounds are in the grammar
    remote, t2 = make(ok, role=ModelRole(backend="openai", model="gpt-4o-mini"))
    remote.chat_many([ask("j", response_model=Verdict)])
    fmt = t2.calls[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert set(fmt["json_schema"]["schema"]["required"]) == {"score", "label"}


def test_reasoning_models_take_max_completion_tokens_and_no_temperature(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")
    role = ModelRole(backend="openai", model="o3-mini", sampling=Sampling(reasoning_effort="low", max_tokens=500))
    client, transport = make(lambda body: "thought", role=role)
    client.chat_many([ask("x", logprobs=True)])
    body = transport.calls[0]
    assert body["max_completion_tokens"] == 500 and body["reasoning_effort"] == "low"
    assert not {"temperature", "top_p", "max_tokens", "logprobs"} & set(body)
    chat = ModelRole(backend="openai", model="gpt-4o-mini", sampling=Sampling(temperature=0.2, max_tokens=50))
    client, transport = make(lambda body: "x", role=chat)
    client.chat_many([ask("x")])
    assert transport.calls[0]["temperature"] == 0.2 and transport.calls[0]["max_completion_tokens"] == 50
    compat = ModelRole(backend="openai_compatible", model="m", base_url="http://x/v1",
                       sampling=Sampling(max_tokens=50))
    client, transport = make(lambda body: "x", role=compat)
    client.chat_many([ask("x")])
    assert transport.calls[0]["max_tokens"] == 50 and "max_completion_tokens" not in transport.calls[0]


def test_logprobs_give_an_expected_score():
    client, transport = make(lambda body: "7")
    result = client.chat_many([ask("score 0-9", logprobs=True, top_logprobs=3, max_tokens=1)])[0]
    assert transport.calls[0]["logprobs"] is True and transport.calls[0]["top_logprobs"] == 3
    token = result.logprobs[0]
    assert token.token == "7" and token.logprob == -0.5 and len(token.top) == 3
    probs = {t: math.exp(lp) for t, lp in token.top if t.isdigit()}
    expected = sum(int(t) * p for t, p in probs.items()) / sum(probs.values())
    assert expected == pytest.approx(7.0)


def test_n_samples_come_back_as_choices():
    role = ModelRole(backend="openai_compatible", model="m", base_url="http://x/v1", sampling=Sampling(n=2))

    def two(body):
        out = completion_body("first", body)
        out["choices"].append({**out["choices"][0], "index": 1, "message": {"role": "assistant", "content": "second"}})
        return out

    client, transport = make(two, role=role)
    result = client.chat_many([ask("x")])[0]
    assert transport.calls[0]["n"] == 2 and result.text == "first" and result.choices == ["first", "second"]


def test_concurrency_is_bounded():
    in_flight, peak = 0, 0

    async def slow(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx2.Response(200, json=completion_body("x", json.loads(request.content)))

    role = ModelRole(max_concurrency=5)
    client = ModelClient(role, "generator", CacheParams(enabled=False), transport=httpx2.MockTransport(slow),
                         progress=False)
    results = client.chat_many([ask(f"q{i}") for i in range(40)])
    assert all(r.ok for r in results) and peak == 5


def test_embedded_calls_sharing_a_spec_go_one_after_another_and_calls_alone_side_by_side():
    """llama-server shares no KV cache between its slots and reading a prompt is compute-bound on a CPU: calls
    that share a spec in the system prompt run one at a time (each then reads only what follows the spec), on at
    most SHARED_LANES lanes, while calls with nothing in common run side by side on the other slots."""
    shared, alone, peak_shared, peak_all = 0, 0, 0, 0
    per_spec: dict[str, int] = {}
    peak_per_spec = 0

    async def slow(request):
        nonlocal shared, alone, peak_shared, peak_all, peak_per_spec
        body = json.loads(request.content)
        first = body["messages"][0]["content"]
        is_shared = body["messages"][0]["role"] == "system"
        shared, alone = shared + is_shared, alone + (not is_shared)
        per_spec[first] = per_spec.get(first, 0) + 1
        peak_shared, peak_all = max(peak_shared, shared), max(peak_all, shared + alone)
        peak_per_spec = max(peak_per_spec, per_spec[first])
        await asyncio.sleep(0.02)
        shared, alone = shared - is_shared, alone - (not is_shared)
        per_spec[first] -= 1
        return httpx2.Response(200, json=completion_body(body["messages"][-1]["content"], body))

    def with_spec(spec: str, text: str) -> ChatRequest:
        return ChatRequest(messages=[{"role": "system", "content": spec}, {"role": "user", "content": text}])

    requests = [with_spec(spec, f"{spec} q{i}") for spec in ("spec A", "spec B", "spec C") for i in range(3)]
    requests += [ask(f"alone {i}") for i in range(9)]  # no system prompt: each its own first message
    client = ModelClient(ModelRole(max_concurrency=4), "policy", CacheParams(enabled=False),
                         transport=httpx2.MockTransport(slow), progress=False)
    results = client.chat_many(requests)
    assert [r.text for r in results] == [r.messages[-1]["content"] for r in requests]  # in the order asked
    assert peak_per_spec == 1 and peak_shared == SHARED_LANES and peak_all == 4


def test_works_inside_a_running_event_loop():
    """As in a Jupyter kernel, where the notebook's own loop is already running."""
    client, _ = make(lambda body: "from a kernel")

    async def cell():
        return client.chat_many([ask("x")])[0].text

    assert asyncio.run(cell()) == "from a kernel"

    async def async_cell():
        return (await client.achat_many([ask("y")]))[0].text

    assert asyncio.run(async_cell()) == "from a kernel"


def test_usage_is_merged_per_role_and_written_atomically(tmp_path, cache):
    gen, _ = make(lambda body: "one two three", cache=cache, tmp_path=tmp_path)
    gen.chat_many([ask("a b"), ask("c")])
    gen.chat_many([ask("a b"), ask("d e f")])  # one cache hit
    judge, _ = make(lambda body: 500, role=ModelRole(max_retries=0), tmp_path=tmp_path, role_name="judge")
    with pytest.raises(ModelCallsFailed):  # its usage is written all the same
        judge.chat_many([ask("x")])
    stage = tmp_path / "02_generate"
    data = json.loads((stage / "usage.json").read_text())
    assert data["generator"] == {"requests": 4, "cache_hits": 1, "failures": 0, "prompt_tokens": 6,
                                 "cached_prompt_tokens": 0, "completion_tokens": 9,
                                 "wall_s": data["generator"]["wall_s"]}
    assert data["generator"]["wall_s"] > 0
    assert data["judge"]["failures"] == 1 and data["judge"]["requests"] == 1
    assert not list(stage.glob("*.tmp"))


def test_progress_bar_shows_errors_and_cache_hits(capsys, cache):
    client, _ = make(lambda body: 400 if "bad" in body["messages"][-1]["content"] else "ok", cache=cache)
    client.chat_many([ask("fine")])
    client.progress = True
    client.chat_many([ask("fine"), ask("bad"), ask("new")], desc="judge")
    err = capsys.readouterr().err
    assert "judge" in err and "3/3" in err and "errors=1" in err and "cached=1" in err


def test_no_requests_no_calls():
    client, transport = make(lambda body: "x")
    assert client.chat_many([]) == [] and transport.calls == []


def test_interrupt_keeps_finished_calls_and_the_client_usable(cache):
    """Ctrl-C (or a Jupyter interrupt) stops chat_many; the calls that finished are in the cache."""
    import _thread
    import threading

    async def slow(request):
        await asyncio.sleep(0.1)
        return httpx2.Response(200, json=completion_body("done", json.loads(request.content)))

    client = ModelClient(ModelRole(max_concurrency=2), "generator", cache, transport=httpx2.MockTransport(slow),
                         progress=False)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.chat_many([ask(f"q{i}") for i in range(60)])  # 3 s of calls: interrupted well before the end
    finally:
        signal.signal(signal.SIGINT, previous)
    finished = len(client.cache)
    assert 1 <= finished < 60  # stopped early, though the main thread was waiting on the worker; finished calls kept
    results = client.chat_many([ask(f"q{i}") for i in range(60)])
    assert all(r.ok for r in results) and sum(r.cached for r in results) == finished
    client.close()


def test_closed_client_refuses_work():
    client, _ = make(lambda body: "x")
    with client:
        client.chat_many([ask("x")])
    with pytest.raises(RuntimeError, match="closed"):
        client.chat_many([ask("x")])


def test_prefill_continues_the_reply_over_the_chat_template(tmp_path):
    from delib.models import ChatRequest, ModelClient, scripted_transport
    from delib.run.config import CacheParams, ModelRole

    transport = scripted_transport(lambda body: "I cite [a].\n</think>\nHello.")
    cache = CacheParams(path=str(tmp_path / "c.sqlite"))
    with ModelClient(ModelRole(), "generator", cache, transport=transport, progress=False) as client:
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
        res = client.chat(ChatRequest(messages=msgs, prefill="<think>\n"))
        plain = client.chat(ChatRequest(messages=msgs))
    body = transport.calls[0]
    assert "messages" not in body and body["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert "<|im_end|>" in body["stop"]
    assert res.text == "<think>\nI cite [a].\n</think>\nHello."
    assert plain.key != res.key and "messages" in transport.calls[1]  # prefill is part of the cache key
    with ModelClient(ModelRole(backend="openai_compatible", base_url="http://127.0.0.1:9/v1", prefill="continue"),
                     "g", cache, transport=transport, progress=False) as client:
        res = client.chat(ChatRequest(messages=msgs, prefill="<think>\n"))
    assert transport.calls[-1]["continue_final_message"] is True
    assert transport.calls[-1]["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert res.text.startswith("<think>\nI cite")


def server_that(continues: bool):
    """A scripted openai_compatible server that either continues a pre-filled reply or opens a new turn."""
    def answer(body):
        if body.get("continue_final_message") and continues:
            return " 5, 6, 7," if body["messages"][-1]["content"] == "1, 2, 3, 4," else "the rest"
        if "Count" in json.dumps(body):  # a new turn, counting from 1 for as many tokens as it may
            return " ".join("1, 2, 3, 4, 5".split()[:body["max_tokens"]])
        return "<think>\nmy own turn"
    return answer


def test_an_openai_compatible_server_is_probed_once_whether_it_continues_a_prefill(tmp_path, cache):
    from delib.models.servers import embedded_model_path

    msgs = [{"role": "user", "content": "Hi"}]
    prestarted = [ChatRequest(messages=msgs, prefill="<think>\n", stop=["</think>"], max_tokens=8)]
    role = ModelRole(backend="openai_compatible", base_url="http://127.0.0.1:9/v1", model="m")

    client, transport = make(server_that(continues=True), cache=cache, role=role)
    assert client.prefill_mode() == "continue"
    assert client.unless_prestartable(prestarted, 64) == (prestarted, True)
    client.chat(prestarted[0])
    assert transport.calls[-1]["continue_final_message"] is True
    client.close()
    again, transport = make(server_that(continues=True), cache=cache, role=role)
    assert again.prefill_mode() == "continue" and transport.calls == []  # the verdict came from the cache
    again.close()

    # a server that restarts (llama-cpp-python's, Ollama's): the chat template where one is known ...
    gguf = role.model_copy(update={"model": str(embedded_model_path("smollm2-135m-instruct"))})
    client, transport = make(server_that(continues=False), role=gguf)
    with pytest.warns(UserWarning, match="restarts a pre-filled reply.*with the chat template of"):
        assert client.prefill_mode() == "template"
    assert client.chat(prestarted[0]).text.startswith("<think>\n")
    assert transport.calls[-1]["prompt"].endswith("<|im_start|>assistant\n<think>\n")
    client.close()
    # ... else one turn, the model writing its own <think>
    client, transport = make(server_that(continues=False), role=role.model_copy(update={"model": "other"}))
    with pytest.warns(UserWarning):
        requests, kept = client.unless_prestartable(prestarted, 64)
    assert not kept and requests[0].prefill is None and requests[0].stop is None and requests[0].max_tokens == 64
    client.close()
    # a server that rejects the extension's fields (400) does not continue either
    client, _ = make(lambda body: 400 if body.get("continue_final_message") else "x",
                     role=role.model_copy(update={"model": "o2"}))
    with pytest.warns(UserWarning):
        assert client.prefill_mode() == "off"
    client.close()


@pytest.mark.parametrize("prefill", [None, "<think>\n"])  # a prefilled call goes out as a raw prompt
def test_embedded_calls_sharing_a_system_prompt_go_together(prefill):
    """llama.cpp reuses the KV cache of the previous request's prefix: calls with the same spec go one after the
    other, and results still come back in the order asked."""
    client, transport = make(lambda body: "ok", role=ModelRole(backend="embedded", max_concurrency=1))
    requests = [ChatRequest(messages=[{"role": "system", "content": f"spec {'AB'[i % 2]}"},
                                      {"role": "user", "content": f"q{i}"}], prefill=prefill, meta={"i": i})
                for i in range(6)]
    results = client.chat_many(requests)
    assert [r.meta["i"] for r in results] == list(range(6))
    sent = [json.dumps(b) for b in transport.calls]
    assert [next(f"q{i}" for i in range(6) if f"q{i}" in s) for s in sent] == ["q0", "q2", "q4", "q1", "q3", "q5"]
    client.close()


def test_a_damaged_cache_file_is_refused_with_its_path_and_a_damaged_row_is_asked_again(tmp_path):
    import sqlite3

    from delib.models.cache import CacheError, CallCache

    bad = tmp_path / "calls.sqlite"
    bad.write_text("not a database " * 100)
    with pytest.raises(CacheError, match=r"calls\.sqlite: the model-call cache is not a readable sqlite database"):
        CallCache(bad)
    assert bad.read_text().startswith("not a database")  # left as it was
    good = CallCache(tmp_path / "ok.sqlite")
    good.put("a", {"text": "fine"})
    db = sqlite3.connect(tmp_path / "ok.sqlite")
    db.execute("INSERT INTO calls (key, value) VALUES ('b', '{broken')")
    db.commit()
    assert good.get_many(["a", "b"]) == {"a": {"text": "fine"}}


def test_a_model_served_from_a_local_folder_is_known_by_its_weights_not_its_path(tmp_path, cache):
    """Stage 06 serves a hub-model checkpoint with `transformers serve` from the same folder name on every run:
    retrained weights in that folder must not be answered from the previous model's cached replies."""
    folder = tmp_path / "merged_sft"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights of the first training")
    role = ModelRole(backend="openai_compatible", model=str(folder), base_url="http://127.0.0.1:9/v1")
    calls = []

    def answer(body):
        calls.append(body)
        return f"reply {len(calls)}"

    def ask_once():
        client, _ = make(answer, cache=cache, role=role)
        try:
            return client.chat(ask("hi")).text
        finally:
            client.close()

    first = ask_once()
    assert ask_once() == first and len(calls) == 1  # same weights: the cache answers
    (folder / "model.safetensors").write_bytes(b"weights of the second training")
    assert ask_once() != first and len(calls) == 2  # retrained in place: asked again
    (folder / "model.safetensors").write_bytes(b"weights of the first training")
    assert ask_once() == first and len(calls) == 2  # the first weights back: their replies are valid again
    named = role.model_copy(update={"model": "served-sft", "revision": "run-2"})
    assert make(answer, role=named)[0].model_identity == "served-sft@run-2"


def test_a_resumed_run_whose_prefilled_answers_are_cached_needs_no_probe_of_a_server_that_is_down(cache):
    msgs = [{"role": "user", "content": "Hi"}]
    prestarted = [ChatRequest(messages=msgs, prefill="<think>\n", stop=["</think>"])]
    role = ModelRole(backend="openai_compatible", base_url="http://127.0.0.1:9/v1", model="m", prefill="continue")
    first, _ = make(server_that(continues=True), cache=cache, role=role)
    first.chat(prestarted[0])
    first.close()
    down, transport = make(lambda body: httpx2.ConnectError("refused"), cache=cache,
                           role=role.model_copy(update={"prefill": "auto"}))
    assert down.unless_prestartable(prestarted, 64) == (prestarted, True)
    assert down.chat(prestarted[0]).cached and transport.calls == []
    down.close()
