"""A fault-injecting OpenAI-compatible server on loopback, for the model client's tests and benchmark.

It answers /v1/chat/completions after a set latency and, at set rates, with 429 (and Retry-After), 500, a hang
(the client times out), malformed JSON, or a dropped connection. It also implements the little of /v1/files and
/v1/batches that the Batch API path needs. /stats tells how many requests came and how often each distinct
request body was answered successfully, so a test can prove that nothing was lost or sent again.
With `stage_replies` its answers are good enough for the real stages to go on (a CoT and an answer for the
generator, JSON that fits the asked-for schema for the judge); with `api_key` it answers 401 without that key.

In a test:  with FaultServer(FaultConfig(rate_500=0.1)) as srv: ... srv.base_url ... srv.stats()
Alone:      python tests/fault_server.py --latency-s 0.1 --port 0    (prints "PORT <n>", serves until killed)
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional
from urllib.request import Request, urlopen

REPLY_PREFIX = "REPLY:"  # a last user message "REPLY:<text>" is answered with exactly <text>


@dataclass
class FaultConfig:
    latency_s: float = 0.0  # before every chat answer (and before every fault but hang and drop)
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_hang: float = 0.0  # no answer: the client's timeout must fire
    rate_malformed: float = 0.0  # 200 with a body that is not JSON
    rate_drop: float = 0.0  # connection closed without an answer
    retry_after_s: float = 0.05  # sent with every 429
    hang_s: float = 30.0
    status: Optional[int] = None  # answer every chat request with this status (e.g. 400, 401)
    reject_json_schema: bool = False  # answer 500 to response_format json_schema, as llama.cpp's server does
    batch_polls_to_complete: int = 1  # GETs of a batch before it completes
    batch_line_error_rate: float = 0.0
    seed: int = 0
    stage_replies: bool = False  # answer as stage_reply does (a stage can go on) rather than with an echo
    api_key: Optional[str] = None  # answer 401 to every request without `Authorization: Bearer <api_key>`
    owned_by: Optional[str] = None  # the model list's owned_by, as llama-server ("llamacpp") or vLLM ("vllm") says


@dataclass
class _State:
    received: int = 0
    faults: Counter = field(default_factory=Counter)
    ok_by_body: Counter = field(default_factory=Counter)  # sha256 of request body -> successful answers
    bodies: list = field(default_factory=list)  # every chat request body received, in order
    files: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)
    batch_creates: int = 0
    unauthorized: int = 0  # requests refused for a missing or wrong API key


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def reply_text(body: dict) -> str:
    """The deterministic answer to a chat request."""
    messages = body.get("messages") or []
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(last, str) and last.startswith(REPLY_PREFIX):
        return last[len(REPLY_PREFIX):]
    return f"echo seed={body.get('seed')}: {str(last)[:60]}"


SPEC_ID = re.compile(r"\[([a-z0-9][\w.:-]*)\]")  # a section's id, as a rendered spec shows it
COUNT = re.compile(r"(\d+),\s*$")  # a pre-filled reply that ends in the middle of a count


def schema_instance(schema: dict, h: str) -> object:
    """A value that fits a JSON schema of the kind structured output asks for (objects, ints, strings, enums),
    drawn from the hash `h`."""
    if "enum" in schema:
        return schema["enum"][int(h[:4], 16) % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {name: schema_instance(sub, hashlib.sha256((h + name).encode()).hexdigest())
                for name, sub in (schema.get("properties") or {}).items()}
    if kind in ("integer", "number"):
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 10))
        return lo + int(h[:4], 16) % (hi - lo + 1)
    if kind == "boolean":
        return int(h[:2], 16) % 2 == 0
    return f"fake {h[:8]}"


def stage_reply(body: dict) -> str:
    """What a capable model would answer, from the hash of the request: JSON that fits a response_format's
    schema; otherwise a CoT in <think> (citing the first section of the spec in the system prompt, if any) and an
    answer, or the part of them that follows a pre-started reply (vLLM's continue_final_message)."""
    h = body_hash(body)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema")
    if schema:
        return json.dumps(schema_instance(schema, h))
    messages = body.get("messages") or []
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    cited = "".join(f"[{i}]" for i in SPEC_ID.findall(system)[:1])
    cot = (f"The user asks {str(user)[:40]!r}\nApplicable: {cited}\nReasoning: reasoning {h[:8]}\n"
           f"Action: comply\nStyle: {cited}")
    answer = f"Here is a short, helpful reply ({h[8:16]})."
    prefill = (messages[-1].get("content") or "") if body.get("continue_final_message") and messages else None
    if prefill is None:
        return f"<think>\n{cot}\n</think>\n{answer}"
    if count := COUNT.search(prefill):  # "1, 2, 3, 4," goes on " 5, 6, ...", as a model continuing a reply does
        return " " + ", ".join(str(n) for n in range(int(count.group(1)) + 1, 11))
    return answer if "</think>" in prefill else cot  # the CoT stops before </think>, as its stop string asks


def completion(body: dict, stage_replies: bool = False) -> dict:
    text = stage_reply(body) if stage_replies else reply_text(body)
    words = text.split() or [""]
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
              "logprobs": None}
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        choice["logprobs"] = {"content": [
            {"token": w, "logprob": -0.1, "bytes": None,
             "top_logprobs": [{"token": w if j == 0 else f"{w}~{j}", "logprob": -0.1 * (j + 1), "bytes": None}
                              for j in range(k)]} for w in words]}
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                      "total_tokens": prompt_tokens + len(words)}}


class FaultServer:
    """The server, run on its own event loop in a daemon thread."""

    def __init__(self, config: FaultConfig = FaultConfig(), port: int = 0):
        self.config, self._port = config, port
        self.state = _State()
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._in_flight = 0  # chat requests being answered (kept across resets)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self.port: Optional[int] = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "FaultServer":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self._port, backlog=1024))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fault-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with self._lock:
            return {"received": self.state.received, "faults": dict(self.state.faults),
                    "ok_by_body": dict(self.state.ok_by_body), "batch_creates": self.state.batch_creates,
                    "unauthorized": self.state.unauthorized, "in_flight": self._in_flight,
                    "ok": sum(self.state.ok_by_body.values())}

    def bodies(self) -> list[dict]:
        """Every chat request body received since the last reset, in order."""
        with self._lock:
            return list(self.state.bodies)

    def reset(self) -> None:
        with self._lock:
            self.state = _State()

    # -------------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in lines[1:] if ":" in line)}
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                keep = await self._route(method, path, headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    async def _send(self, writer, status: int, payload, headers: Optional[dict] = None,
                    content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Status")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                     f"{extra}\r\n".encode() + data)
        await writer.drain()

    async def _route(self, method: str, path: str, headers: dict, raw: bytes, writer) -> bool:
        path = path.split("?", 1)[0]
        key = self.config.api_key
        if key is not None and path.startswith("/v1/") and headers.get("authorization") != f"Bearer {key}":
            with self._lock:
                self.state.unauthorized += 1
            await self._send(writer, 401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
            return True
        if path == "/v1/chat/completions" and method == "POST":
            with self._lock:
                self._in_flight += 1
            try:
                return await self._chat(json.loads(raw), writer)
            finally:
                with self._lock:
                    self._in_flight -= 1
        if path == "/v1/models":
            model = {"id": "fake", "object": "model"}
            if self.config.owned_by:
                model["owned_by"] = self.config.owned_by
            await self._send(writer, 200, {"object": "list", "data": [model]})
        elif path == "/stats":
            await self._send(writer, 200, self.stats())
        elif path == "/v1/files" and method == "POST":
            await self._send(writer, 200, self._upload(headers, raw))
        elif path.startswith("/v1/files/") and path.endswith("/content"):
            file_id = path.split("/")[3]
            await self._send(writer, 200, self.state.files[file_id], content_type="application/octet-stream")
        elif path == "/v1/batches" and method == "POST":
            await self._send(writer, 200, self._create_batch(json.loads(raw)))
        elif path.startswith("/v1/batches/") and method == "GET":
            batch = self.state.batches.get(path.split("/")[3])
            if batch is None:
                await self._send(writer, 404, {"error": {"message": "no such batch"}})
            else:
                await self._send(writer, 200, self._poll_batch(batch))
        else:
            await self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        return True

    async def _chat(self, body: dict, writer) -> bool:
        cfg = self.config
        with self._lock:
            self.state.received += 1
            self.state.bodies.append(body)
            roll = self._rng.random()
        if cfg.status is not None:
            message = {401: "Incorrect API key provided: sk-abcdefgh1234****wxyz"}.get(cfg.status, "scripted status")
            await self._send(writer, cfg.status, {"error": {"message": message, "type": "scripted"}})
            return True
        fault, edge = None, 0.0
        for name, rate in (("429", cfg.rate_429), ("500", cfg.rate_500), ("hang", cfg.rate_hang),
                           ("malformed", cfg.rate_malformed), ("drop", cfg.rate_drop)):
            edge += rate
            if roll < edge:
                fault = name
                break
        wants_schema = (body.get("response_format") or {}).get("type") == "json_schema"
        if fault is None and cfg.reject_json_schema and wants_schema:
            fault = "json_schema"
        if fault:
            with self._lock:
                self.state.faults[fault] += 1
        if fault == "drop":
            return False
        if fault == "hang":
            await asyncio.sleep(cfg.hang_s)
            return False
        await asyncio.sleep(cfg.latency_s)
        if fault == "429":
            await self._send(writer, 429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                             {"Retry-After": f"{cfg.retry_after_s}"})
        elif fault == "500":
            await self._send(writer, 500, {"error": {"message": "injected server error"}})
        elif fault == "json_schema":
            await self._send(writer, 500, {"error": {"message": "response_format type json_schema not supported"}})
        elif fault == "malformed":
            await self._send(writer, 200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
        else:
            await self._send(writer, 200, completion(body, cfg.stage_replies))
            with self._lock:
                self.state.ok_by_body[body_hash(body)] += 1
        return True

    # -------------------------------------------------------------- files and batches

    def _upload(self, headers: dict, raw: bytes) -> dict:
        boundary = headers["content-type"].split("boundary=", 1)[1].strip('"').encode()
        content = b""
        for part in raw.split(b"--" + boundary):
            if b'name="file"' in part:
                content = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
        with self._lock:
            file_id = f"file-{len(self.state.files) + 1}"
            self.state.files[file_id] = content
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": "input.jsonl", "purpose": "batch", "status": "processed"}

    def _create_batch(self, req: dict) -> dict:
        with self._lock:
            self.state.batch_creates += 1
            batch_id = f"batch-{len(self.state.batches) + 1}"
            batch = {"id": batch_id, "object": "batch", "endpoint": req["endpoint"], "status": "validating",
                     "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                     "created_at": int(time.time()), "output_file_id": None, "error_file_id": None,
                     "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0}
            self.state.batches[batch_id] = batch
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _poll_batch(self, batch: dict) -> dict:
        with self._lock:
            batch["_polls"] += 1
            if batch["status"] != "completed" and batch["_polls"] >= self.config.batch_polls_to_complete:
                outputs, errors = [], []
                lines = self.state.files[batch["input_file_id"]].decode().splitlines()
                for line in filter(None, lines):
                    item = json.loads(line)
                    if self._rng.random() < self.config.batch_line_error_rate:
                        errors.append({"id": "r", "custom_id": item["custom_id"], "response": None,
                                       "error": {"code": "server_error", "message": "injected line failure"}})
                        continue
                    self.state.ok_by_body[body_hash(item["body"])] += 1
                    response = {"status_code": 200, "request_id": "req",
                                "body": completion(item["body"], self.config.stage_replies)}
                    outputs.append({"id": "r", "custom_id": item["custom_id"], "error": None, "response": response})
                out_id = f"file-{len(self.state.files) + 1}"
                self.state.files[out_id] = "".join(json.dumps(o) + "\n" for o in outputs).encode()
                batch["output_file_id"] = out_id
                if errors:
                    err_id = f"file-{len(self.state.files) + 1}"
                    self.state.files[err_id] = "".join(json.dumps(e) + "\n" for e in errors).encode()
                    batch["error_file_id"] = err_id
                batch["status"] = "completed"
                batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}
            elif batch["status"] == "validating":
                batch["status"] = "in_progress"
            return {k: v for k, v in batch.items() if not k.startswith("_")}


def fetch_stats(base_url: str) -> dict:
    """/stats of a fault server running in another process."""
    with urlopen(Request(base_url.removesuffix("/v1") + "/stats"), timeout=10) as r:
        return json.load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    for name, default in asdict(FaultConfig()).items():
        if name == "status":
            continue
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(default, bool) else \
            str if default is None else type(default)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = vars(parser.parse_args())
    port = args.pop("port")
    server = FaultServer(FaultConfig(**args), port=port).start()
    print(f"PORT {server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
