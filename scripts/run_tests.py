"""`make test`: the whole suite as three pytest processes at once, one thread each, then one report.

The suite's time is spent in three parts that share nothing: nbval on the stage notebooks (the smoke run, in the
project's outputs/), the any-spec run (tests/test_any_spec.py: a whole run on another spec, all of it in a temporary
folder) with the training run stopped by Ctrl-C, and every other test. Each part waits mostly on one single-threaded
process (llama-server, or torch), so on a machine with two cores or more the three run side by side. Each process gets OMP_NUM_THREADS (when it is not set
already) of at most cores / 3, which torch and the embedded llama-server both obey (models/servers.py): more busy
threads than cores slow llama.cpp many times over.

Usage: python scripts/run_tests.py [extra pytest arguments, given to every part]
Prints each part's output as it was written, then the slowest tests of all parts, then one line per part; the exit
status is the first non-zero status of a part (pytest's 5, no test collected, included; with extra arguments, such
as -k, a part that selects nothing is not a failure unless every part selects nothing). Ctrl-C or SIGTERM stops all
three and their servers.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Parts of about equal length (fresh checks of 2026-12: the any-spec run alone ~450 s with three parts at once).
LONG = ["tests/test_any_spec.py", "tests/test_interrupt_training.py"]
PARTS = [
    ("notebooks (nbval)", ["notebooks"]),
    ("the any-spec run, the Ctrl-C run", LONG),
    ("every other test", ["tests", *[f"--ignore={path}" for path in LONG]]),
]
SLOWEST = 15
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s (call|setup|teardown)\s+(\S.*)$")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slowest(text: str) -> list[tuple[float, str]]:
    """(seconds, 'call  nodeid') of every line of pytest's --durations section."""
    found, inside = [], False
    for line in text.splitlines():
        if "slowest" in line and "durations" in line:
            inside = True
            continue
        if inside:
            m = DURATION.match(line)
            if m:
                found.append((float(m.group(1)), f"{m.group(2):8} {m.group(3)}"))
            elif line.startswith("="):
                inside = False
    return found


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(extra: list[str]) -> int:
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS", "").strip():
        env["OMP_NUM_THREADS"] = str(max(1, cores() // len(PARTS)))
    logs = Path(tempfile.mkdtemp(prefix="delib-tests-"))
    signal.signal(signal.SIGTERM, _interrupted)  # a CI timeout: stop the parts as Ctrl-C does
    started, procs = time.monotonic(), []
    for i, (name, args) in enumerate(PARTS):
        log = (logs / f"part{i}.log").open("w")
        cmd = [sys.executable, "-m", "pytest", *args, f"--durations={SLOWEST}", *extra]
        procs.append((name, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    print(f"run_tests: {len(PARTS)} pytest processes at once, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
          f"their output follows when each is done (meanwhile in {logs})", flush=True)
    finished: dict[int, tuple[int, float]] = {}  # part -> (exit status, seconds after the start)
    try:
        while len(finished) < len(procs):
            for i, (_, proc, log) in enumerate(procs):
                if i not in finished and proc.poll() is not None:
                    log.close()
                    finished[i] = (proc.returncode, time.monotonic() - started)
            time.sleep(0.5)
    except KeyboardInterrupt:  # pytest stops its servers on SIGINT, as on a terminal's Ctrl-C
        for _, proc, _ in procs:
            proc.send_signal(signal.SIGINT)
        for _, proc, _ in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"run_tests: interrupted; the parts' output is in {logs}")
        raise
    results = [(name, *finished[i]) for i, (name, _, _) in enumerate(procs)]
    durations = []
    for i, (name, code, _) in enumerate(results):
        text = (logs / f"part{i}.log").read_text(errors="replace")
        print(f"\n{'#' * 30} {name}: pytest exit {code} {'#' * 30}\n{text}", flush=True)
        durations += slowest(text)
    print(f"\n{'=' * 30} slowest {SLOWEST} of all parts {'=' * 30}")
    for seconds, what in sorted(durations, reverse=True)[:SLOWEST]:
        print(f"{seconds:8.2f}s {what}")
    for name, code, wall in results:
        print(f"run_tests: {name}: exit {code}, done after {wall:.0f} s")
    print(f"run_tests: whole suite {time.monotonic() - started:.0f} s")
    codes = [code for _, code, _ in results]
    if extra and 5 in codes and set(codes) != {5}:  # a selection (-k, -m, a path) that one part has no test of
        codes = [0 if code == 5 else code for code in codes]
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
