"""`transformers serve` on a loopback port: an OpenAI-compatible server for weights llama.cpp cannot take.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from delib.run.config import ModelRole
from delib.models import servers
if TYPE_CHECKING:
    pass


class TransformersServer:
    """`transformers serve` of one Hugging Face folder on a free loopback port: an OpenAI-compatible server for
    weights llama.cpp cannot take. `role()` gives the ModelRole that queries it."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32",
                 log_dir: Optional[Path] = None, start_timeout_s: float = 300.0):
        self.folder, self.device, self.dtype = str(folder), device, dtype
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "delib-servers"
        self.start_timeout_s = start_timeout_s
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        return [str(cli), "serve", self.folder, "--host", "127.0.0.1", "--port", str(port), "--device", self.device,
                "--dtype", self.dtype, "--log-level", "warning"]

    def start(self) -> "TransformersServer":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = servers.free_port()
        self.log_path = self.log_dir / f"transformers_serve-{self.port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder: never reach for the hub
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.is_file() else ""
        self.stop()
        raise RuntimeError(f"transformers serve did not start (log {self.log_path}):\n{tail}")

    def role(self, template: ModelRole) -> ModelRole:
        """`template` (its sampling and limits) pointed at this server."""
        return template.model_copy(update={"backend": "openai_compatible", "base_url": self.base_url,
                                           "model": self.folder, "adapter": None, "api_key_env": None})

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        servers.stop_process_group(proc)

    def __enter__(self) -> "TransformersServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
