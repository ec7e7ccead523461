"""The model client every stage uses (generation, judging, labelling, RL reward, evaluation): one class for every
role and backend, on the official async `openai` package.

`chat_many` is synchronous and safe to call inside a Jupyter kernel: the async work runs on an event loop in a
worker thread. It answers from the cache first, sends the rest with a bounded number in flight, retries what is
worth retrying, records what still fails, and adds its token and time totals to the stage's usage.json.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import httpx2
import openai

from delib.run.config import CacheParams, ModelRole

if TYPE_CHECKING:
    from delib.run.config import RunParams

from delib.models import servers
from delib.models.batch import run_batch
from delib.models.cache import CallCache, NoCache
from delib.models.calls import ChatRequest, ChatResult, TokenLogprob
from delib.models.prefill import PrefillMixin
from delib.models.prefixes import PrefixStore
from delib.models.progress import LoopThread, Tracker
from delib.models.scheduling import fan_out, in_lanes
from delib.models.requests import SEED_BITS, add_structured, plan_call
from delib.models.usage import Usage, add_usage
from delib.models.wire import (
    PARSE_RETRY_SEED_STRIDE,
    RETRY_AFTER_CAP_S,
    WORKER_STAGGER_S,
    CallPlan,
    MalformedReply,
    ModelAuthError,
    ModelCallsFailed,
    classify_error,
    extract_reply,
    json_body,
    retry_after_s,
    scrub_secret,
)
from delib.run.io import env_value, sha256_file
from delib.run.paths import project_root, resolve
from delib.run.paths import run_dir as run_folder
from delib.run.providers import provider_for

from .structured import parse_reply


class ModelClient(PrefillMixin):
    """Calls one model role (generator, judge, policy) for a stage; a context manager."""

    @classmethod
    def for_run(cls, params: "RunParams", role: Optional[ModelRole], role_name: str, stage: str,
                run_dir: Optional[str | Path] = None, **kw) -> "ModelClient":
        """The client of `role` in a run: the run's cache and seed, usage written to `stage`'s folder of the run
        (or of `run_dir`). Every stage builds its clients with this one call."""
        return cls(role, role_name, params.cache, params.seed, run_dir or run_folder(params), stage, **kw)

    def __init__(
        self,
        role: ModelRole,
        role_name: str,
        cache: Optional[CacheParams] = None,
        seed: int = 0,
        run_dir: Optional[str | Path] = None,
        stage: Optional[str] = None,
        *,
        parse_retries: Optional[int] = None,  # extra tries for an invalid structured reply; None: the role's
        backoff_base_s: float = 0.5,  # first retry waits about this long, doubling each time
        backoff_max_s: float = 30.0,
        progress: bool = True,
        transport: Optional[httpx2.AsyncBaseTransport] = None,  # a scripted fake model; no server, no network
        env_file: Optional[str | Path] = None,  # where to look for OPENAI_API_KEY etc.; default <root>/.env
    ) -> None:
        self.role, self.role_name = role, role_name
        self.provider = provider_for(role)  # what the role's backend can do, and how it is asked
        self.run_seed = seed
        self.stage_dir = Path(run_dir) / stage if run_dir is not None and stage else (
            Path(run_dir) if run_dir is not None else None)
        self.parse_retries = role.parse_retries if parse_retries is None else parse_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.progress = progress
        self._transport = transport
        self._env_file = Path(env_file) if env_file else project_root() / ".env"
        cache = cache if cache is not None else CacheParams()
        self.cache = CallCache(resolve(cache.path)) if cache.enabled else NoCache()
        self._loop: Optional[LoopThread] = None
        self._openai: Optional[openai.AsyncOpenAI] = None
        self._server: Optional[servers.EmbeddedServer] = None
        self._secret: Optional[str] = None
        self._fatal: Optional[str] = None
        self._structured = self.provider.structured_output()
        self._identity: Optional[str] = None
        self._prefill: Optional[str] = None  # how a pre-filled reply is sent, once known (prefill_mode)
        self._closed = False
        self.last_usage = Usage()  # totals of the latest chat_many
        if not self.provider.choices and role.sampling.n > 1:
            warnings.warn(f"n > 1 on the {role.backend} backend: llama-cpp-python's server ignores it and llama-server "
                          "takes a slot per choice; ask for several samples with ChatRequest.sample_index instead",
                          stacklevel=2)

    # ---------------------------------------------------------------- public API

    def chat_many(self, requests: Sequence[ChatRequest], desc: Optional[str] = None, *, batch: bool = False,
                  batch_poll_s: float = 30.0, batch_timeout_s: float = 26 * 3600,
                  batch_fallback_live: bool = True) -> list[ChatResult]:
        """Results in the order of `requests`; failed calls carry `error`. batch=True sends the calls that are not
        cached through the Batch API (openai backends), resuming a batch this stage already created."""
        if self._closed:
            raise RuntimeError("this ModelClient is closed")
        started = time.monotonic()
        plans = [self._plan(r) for r in requests]
        unique = {p.key: p for p in plans}  # identical requests make one call
        results: dict[str, ChatResult] = {}
        for key, value in self.cache.get_many(unique).items():
            result = self._result(unique[key], value, cached=True)
            if result is not None:
                results[key] = result
        todo = [p for key, p in unique.items() if key not in results]
        if any(p.request.prefill is not None for p in todo) and \
                self.prefill_mode() != self.provider.planned_prefill():
            todo = [self._plan(p.request) if p.request.prefill is not None else p for p in todo]  # same keys
        tracker = Tracker(len(requests), desc or self.role_name, self.progress)
        tracker.advance(sum(p.key in results for p in plans), cache_hits=sum(p.key in results for p in plans))
        try:
            if todo:
                if self.provider.local_server and self._transport is None:
                    self._ensure_server(logprobs=any(p.body.get("logprobs") for p in todo))
                self._loop = self._loop or LoopThread()
                fresh = self._loop.run(self._run(todo, tracker, batch, batch_poll_s, batch_timeout_s,
                                                 batch_fallback_live))
                results.update(fresh)
        finally:
            tracker.close()
        out = [self._for_request(results[p.key], p) for p in plans]
        self._record_usage(out, todo, time.monotonic() - started)
        if self._fatal:
            raise ModelAuthError(self._fatal)
        self._check_failures(out)
        return out

    def _check_failures(self, results: Sequence[ChatResult]) -> None:
        """Stop when every request failed, or more than the role's `max_failed_share` did (a reply that did not
        parse is the model's answer, not a failed request, and does not count)."""
        failed = [r for r in results if r.error and not r.error.startswith("parse:")]
        if results and (len(failed) == len(results) or len(failed) > self.role.max_failed_share * len(results)):
            raise ModelCallsFailed(f"{self.role_name} ({self.role.backend}, model {self.role.model!r}): "
                                   f"{len(failed)} of {len(results)} requests failed; the first: {failed[0].error}",
                                   list(results))

    async def achat_many(self, requests: Sequence[ChatRequest], desc: Optional[str] = None, **kw) -> list[ChatResult]:
        """chat_many for async callers: runs it in a thread so the caller's loop stays free."""
        return await asyncio.to_thread(self.chat_many, requests, desc, **kw)

    def chat(self, request: ChatRequest) -> ChatResult:
        """One call; same rules as chat_many."""
        return self.chat_many([request])[0]

    @property
    def model_identity(self) -> str:
        """What the cache key knows of the model: its name, and the hash of the weights that answer (an embedded
        model's file and adapter, a local folder or file that a server loads) or the role's `revision`."""
        if self._identity is None:
            fake = self._transport is not None
            engine = "llama-server" if self.provider.local_server and not fake and servers.llama_server_binary() \
                else None
            self._identity = self.provider.identity(hashed=not fake, engine=engine)
        return self._identity

    def close(self) -> None:
        """Close the connection pool, stop the embedded server if this was its last client, close the cache."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._loop is not None and self._openai is not None:
                self._loop.run(self._openai.close())
        finally:
            if self._loop is not None:
                self._loop.close()
            if self._server is not None:
                servers.release(self._server)
                self._server = None
            self.cache.close()

    def __enter__(self) -> "ModelClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- building calls

    def is_reasoning_model(self) -> bool:
        """OpenAI's reasoning models (o-series, gpt-5, or any OpenAI role with a reasoning_effort)."""
        return self.provider.is_reasoning_model()

    def grammar_dialect(self) -> Optional[str]:
        """How this role's server takes a free-text grammar ("llama_cpp", "vllm"; None: it cannot): the role's
        `grammar`, or on auto one probe of the server's model list, its verdict kept in the cache."""
        return self.provider.grammar_dialect(self.cache, self._transport, self._env_file)

    def _plan(self, req: ChatRequest) -> CallPlan:
        return plan_call(self.role, req, self.model_identity, self.run_seed, self.is_reasoning_model(),
                         self._structured, self._prefill, self.provider,
                         self.grammar_dialect() if req.grammar is not None else None)

    def _slot_dir(self) -> Optional[Path]:
        """Where llama-server keeps this model's saved prefixes (prefixes.py): beside the model-call cache, a folder
        per model identity and server build; None without a cache or without llama-server."""
        binary = servers.llama_server_binary()
        if self.cache.path is None or binary is None or self._transport is not None:
            return None
        tag = hashlib.sha256(f"{self.model_identity}|{sha256_file(binary)}".encode()).hexdigest()[:16]
        return Path(self.cache.path).parent / "kv" / tag

    def _ensure_server(self, logprobs: bool) -> None:
        """A running server for this role's weights here (the provider's model_file: a GGUF on llama.cpp, one that
        gives logprobs when a request asks for them, or a Hugging Face folder behind `transformers serve`)."""
        current = self._server
        if current is not None and current.alive() and (current.logits_all or not logprobs):
            return
        role = self.role
        weights = self.provider.model_file()
        if weights is not None and weights.is_dir():  # a Hugging Face folder (transformers provider)
            self._server = servers.acquire_transformers(weights, self.stage_dir)
        else:
            adapter = resolve(role.adapter) if role.adapter else None
            self._server = servers.acquire(servers.embedded_model_path(role.model), role.model, adapter,
                                            self.stage_dir, logprobs=logprobs, parallel=role.max_concurrency,
                                            slot_dir=self._slot_dir())
        if current is not None:
            servers.release(current)
        if self._openai is not None and self._loop is not None:  # another server: reconnect
            self._loop.run(self._openai.close())
            self._openai = None

    def _api_key(self) -> str:
        role = self.role
        if self.provider.local_server or self._transport is not None:
            return "sk-embedded-no-key"
        var = role.key_env
        if var is None:
            return "sk-no-key"  # a local server without auth (vLLM, Ollama, llama.cpp)
        key = env_value(var, self._env_file)
        if not key:
            raise ModelAuthError(f"no API key for role {self.role_name!r}: set the environment variable {var} "
                                 f"(or put `{var}=...` in {self._env_file})")
        return key

    def _auth_message(self, exc: Exception) -> str:
        var = self.role.key_env
        fix = (f"set the environment variable {var} to a valid key (or put it in {self._env_file})" if var else
               f"set models.{self.role_name}.api_key_env in params to the name of the variable holding the key")
        status = getattr(exc, "status_code", "")
        return scrub_secret(f"{status} from the {self.role.backend} backend: the API key was refused; {fix}. "
                      f"Server said: {getattr(exc, 'message', exc)}", self._secret)

    def _openai_client(self) -> openai.AsyncOpenAI:
        if self._openai is None:
            role = self.role
            self._secret = self._api_key()
            if self._transport is not None:
                base_url = "http://fake-model.invalid/v1"
            elif self.provider.local_server:
                base_url = self._server.base_url
            else:
                base_url = role.base_url  # None for openai: the package's default
            limit = role.max_concurrency
            http = httpx2.AsyncClient(
                transport=self._transport,
                limits=httpx2.Limits(max_connections=limit + 4, max_keepalive_connections=limit + 4),
                timeout=httpx2.Timeout(role.timeout_s, connect=min(role.timeout_s, 10.0)),
            )
            self._openai = openai.AsyncOpenAI(api_key=self._secret, base_url=base_url, max_retries=0,
                                              timeout=role.timeout_s, http_client=http)
        return self._openai

    async def _run(self, plans: list[CallPlan], tracker: Tracker, batch: bool, poll_s: float, timeout_s: float,
                   fallback_live: bool) -> dict[str, ChatResult]:
        results: dict[str, ChatResult] = {}
        self._openai_client()
        if batch:
            plans = await self._run_batch(plans, tracker, results, poll_s, timeout_s, fallback_live)
        workers = self.role.max_concurrency
        if self._server is not None:  # no more in flight than the server has slots (llama-cpp-python's: 1)
            workers = min(workers, self._server.parallel)
        workers = min(workers, len(plans))

        async def send(plan: CallPlan, slot: Optional[int] = None) -> bool:
            if self._fatal:
                result = self._failure(plan, "auth", f"not sent: {self._fatal}", attempts=0)
            else:
                result = await self._call(plan, slot)
            results[plan.key] = result
            tracker.advance(1, errors=int(not result.ok))
            return result.ok

        if self._server is not None and self._server.slot_dir is not None:
            store = PrefixStore(self._server.slot_dir, self._server.base_url.removesuffix("/v1"))
            await fan_out(plans, store, workers, send)
        elif self.provider.local_server:
            await in_lanes(plans, workers, send)
        else:
            queue = iter(plans)  # shared: each plan is taken by exactly one worker

            async def worker(rank: int) -> None:
                await asyncio.sleep(rank * WORKER_STAGGER_S)
                for plan in queue:
                    await send(plan)

            await asyncio.gather(*(worker(rank) for rank in range(workers)))
        return results

    async def _call(self, plan: CallPlan, slot: Optional[int] = None) -> ChatResult:
        """One request to its end: retried on 429, 5xx, timeouts, dropped connections and invalid replies; on
        llama-server's `slot` when given."""
        body = dict(plan.body)
        if slot is not None:
            body["id_slot"] = slot
        model = plan.request.response_model
        if model is not None and "response_format" in body and self._structured == "json_object":
            body.pop("response_format")  # planned before the server turned json_schema down
            add_structured(body, model, self._structured)
        attempts = retries = parse_failures = 0
        started = time.monotonic()
        while True:
            attempts += 1
            try:
                # The client's generic post skips the typed-params transform of chat.completions.create, which
                # costs about 1 ms of CPU per call (measured): a third of the budget at 32 calls in flight.
                endpoint = "/completions" if "prompt" in body else "/chat/completions"
                response = await self._openai.post(endpoint, body=body, cast_to=httpx2.Response)
                value = extract_reply(json_body(response), plan.request.prefill)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; unknown ones re-raised there
                kind, retryable = classify_error(exc)
                if kind == "auth":
                    self._fatal = self._auth_message(exc)
                    return self._failure(plan, kind, self._fatal, attempts)
                if self._should_downgrade(kind, exc, body):
                    self._structured = "json_object"
                    body.pop("response_format", None)
                    add_structured(body, model, self._structured)
                    continue
                if retryable and retries < self.role.max_retries:
                    retries += 1
                    await asyncio.sleep(self._backoff_s(retries, retry_after_s(exc)))
                    continue
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                return self._failure(plan, kind, f"{message} (after {attempts} attempts)", attempts)
            plan.spent += Usage(prompt_tokens=value["usage"]["prompt_tokens"],
                                completion_tokens=value["usage"]["completion_tokens"],
                                cached_prompt_tokens=value["usage"]["cached_tokens"])
            value["latency_s"] = time.monotonic() - started
            if model is not None:
                try:
                    parse_reply(model, value["text"])
                except ValueError as err:
                    parse_failures += 1
                    if parse_failures <= self.parse_retries:
                        body["seed"] = (plan.seed + parse_failures * PARSE_RETRY_SEED_STRIDE) % (1 << SEED_BITS)
                        continue
                    failed = self._failure(plan, "parse", f"reply does not fit {model.__name__} after "
                                           f"{parse_failures} tries: {err}", attempts)
                    failed.text, failed.finish_reason = value["text"], value["finish_reason"]
                    return failed
            self.cache.put(plan.key, value, self.model_identity)  # committed now: a kill loses no finished call
            result = self._result(plan, value, cached=False)
            result.attempts = attempts
            return result

    def _should_downgrade(self, kind: str, exc: Exception, body: dict) -> bool:
        """A server that rejects `json_schema` (llama.cpp's answers 500 or 400) gets json_object + schema."""
        if not self.provider.json_fallback or (body.get("response_format") or {}).get("type") != "json_schema":
            return False
        if kind not in ("bad_request", "server_error"):
            return False
        return any(word in str(exc).lower() for word in ("json_schema", "response_format", "schema"))

    def _backoff_s(self, retry: int, retry_after: Optional[float]) -> float:
        """Exponential backoff with jitter, and never shorter than what the server asked for."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
        return delay

    async def _run_batch(self, plans: list[CallPlan], tracker: Tracker, results: dict, poll_s: float,
                         timeout_s: float, fallback_live: bool) -> list[CallPlan]:
        """Send the plans through the Batch API; returns those that still need a live call."""
        if not self.provider.batch:
            raise ValueError(f"the Batch API is for the openai backends, not the {self.role.backend} backend")
        state_dir = (self.stage_dir or Path(".")) / "batches"
        lines = {p.key: p.body for p in plans}
        outputs = await run_batch(self._openai, lines, state_dir, self.role_name, poll_s, timeout_s, tracker.note)
        leftover = []
        for plan in plans:
            out = outputs.get(plan.key)
            reason = out.get("error") if out else "no line for this request in the batch output"
            if out and out.get("body") is not None:
                try:
                    value = extract_reply(out["body"])
                    value["latency_s"] = 0.0
                    if plan.request.response_model is not None:
                        parse_reply(plan.request.response_model, value["text"])
                    plan.spent += Usage(prompt_tokens=value["usage"]["prompt_tokens"],
                                        completion_tokens=value["usage"]["completion_tokens"])
                    self.cache.put(plan.key, value, self.model_identity)
                    result = self._result(plan, value, cached=False)
                    result.attempts = 1
                    results[plan.key] = result
                    tracker.advance(1)
                    continue
                except (ValueError, MalformedReply) as err:
                    reason = str(err)
            if fallback_live:
                leftover.append(plan)
            else:
                results[plan.key] = self._failure(plan, "batch", reason, attempts=1)
                tracker.advance(1, errors=1)
        return leftover

    # ---------------------------------------------------------------- results

    def _result(self, plan: CallPlan, value: dict, cached: bool) -> Optional[ChatResult]:
        """A ChatResult from a cached or fresh value; None if a cached reply no longer validates."""
        parsed = None
        if plan.request.response_model is not None:
            try:
                parsed = parse_reply(plan.request.response_model, value["text"])
            except ValueError:
                return None  # the model class changed its validators: call again
        logprobs = None
        if value.get("logprobs"):
            logprobs = [TokenLogprob(t, lp, [(a, alp) for a, alp in top]) for t, lp, top in value["logprobs"]]
        return ChatResult(
            key=plan.key, text=value["text"], finish_reason=value.get("finish_reason"), parsed=parsed,
            logprobs=logprobs, usage=dict(value.get("usage") or {}), latency_s=float(value.get("latency_s", 0.0)),
            cached=cached, attempts=0, choices=list(value.get("choices") or []),
            sample_index=plan.request.sample_index, meta=plan.request.meta,
        )

    def _failure(self, plan: CallPlan, kind: str, message: str, attempts: int) -> ChatResult:
        return ChatResult(key=plan.key, error=scrub_secret(f"{kind}: {message}", self._secret), attempts=attempts,
                          sample_index=plan.request.sample_index, meta=plan.request.meta)

    @staticmethod
    def _for_request(result: ChatResult, plan: CallPlan) -> ChatResult:
        """The shared result of a key, with this request's own meta (two requests may share one call)."""
        if result.meta is plan.request.meta:
            return result
        copy = ChatResult(**{k: getattr(result, k) for k in result.__dataclass_fields__})
        copy.meta = plan.request.meta
        return copy

    def _record_usage(self, results: list[ChatResult], called: Iterable[CallPlan], wall_s: float) -> None:
        usage = Usage(requests=len(results), cache_hits=sum(r.cached for r in results),
                      failures=sum(not r.ok for r in results), wall_s=wall_s)
        for plan in called:
            usage += plan.spent
        self.last_usage = usage
        if self.stage_dir is not None:
            add_usage(self.stage_dir, self.role_name, usage)
