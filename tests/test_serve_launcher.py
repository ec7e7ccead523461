"""The launcher of llama.cpp's own server (models/server_launcher.py --exec) stops its child with exactly one SIGTERM when the
process group is signalled, without sitting out its grace period; a SIGTERM to the launcher alone is passed on.
The child here is a small Python script standing in for llama-server: it records each SIGTERM and exits 0.3 s after
the first."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import delib.models.server_launcher as launcher

CHILD = """
import signal, sys, time
log = sys.argv[1]
def on_term(signum, frame):
    with open(log, "a") as f:
        f.write("TERM\\n")
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(log + ".ready", "w").close()
while True:
    time.sleep(0.1)
"""


def start(tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen, Path]:
    script, log = tmp_path / "child.py", tmp_path / "signals.log"
    script.write_text(CHILD)
    env = {**os.environ, "DELIB_SERVE_GRACE_S": str(grace_s)}
    proc = subprocess.Popen([sys.executable, launcher.__file__, str(os.getpid()), "--exec", sys.executable, "--",
                             str(script), str(log)], start_new_session=True, env=env)
    deadline = time.monotonic() + 30
    while not Path(f"{log}.ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    return proc, log


def test_a_signal_to_the_group_reaches_the_child_once_and_the_launcher_does_not_wait_out_its_grace(tmp_path):
    proc, log = start(tmp_path, grace_s=60)
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=50) == 0
    assert time.monotonic() - began < 30, "the launcher waited out its grace period instead of reaping the child"
    assert log.read_text() == "TERM\n"


def test_a_signal_to_the_launcher_alone_is_passed_on_to_the_child(tmp_path):
    proc, log = start(tmp_path, grace_s=0.5)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert log.read_text() == "TERM\n"
