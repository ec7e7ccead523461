"""Launcher of the embedded llama.cpp server that exits as soon as the process that started it is gone, so that
not even a SIGKILLed stage leaves an orphan server. It runs either llama.cpp's own `llama-server` binary as its
child (stopped with it), or llama-cpp-python's `llama_cpp.server` in this process.

Run as a script (it imports nothing from delib):
    python server_launcher.py PARENT_PID --exec PATH/llama-server -- <llama-server arguments>
    python server_launcher.py PARENT_PID -- <llama_cpp.server arguments>
"""
import asyncio
import functools
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# a stopping llama-server: the signal passed on after GRACE_S, killed STOP_S later (tests lengthen the grace)
GRACE_S = float(os.environ.get("DELIB_SERVE_GRACE_S", "3"))
STOP_S = 3.0


def _exit_when_orphaned(parent_pid: int, before_exit=None) -> None:
    while True:
        if os.getppid() != parent_pid:  # re-parented: the stage process died without stopping us
            if before_exit is not None:
                before_exit()
            os._exit(0)
        time.sleep(0.5)


def _run_the_model_on_one_thread() -> None:
    """llama.cpp is built with OpenMP here, and every thread that runs the model becomes the master of its own
    OpenMP team. The server runs each request on whichever worker thread anyio picks; once teams add up to more
    threads than cores, libgomp cuts its spin-wait to ~100 spins, the team sleeps between tokens and each token
    pays the wake-up (measured on 2 cores: 55-75 tokens/s instead of ~100 in-process). One thread for every
    model call keeps one team, as in-process use has."""
    try:
        import llama_cpp.server.app as app
    except ImportError:
        return
    if not hasattr(app, "run_in_threadpool"):
        return  # another llama-cpp-python version: leave it as it is
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-model")

    async def run_on_model_thread(func, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(func, *args, **kwargs))

    app.run_in_threadpool = run_on_model_thread


def _forget_settings_from_the_environment() -> None:
    """Both servers read settings they are not given from environment variables (llama_cpp.server: API_KEY, HOST,
    N_CTX, ...; llama-server: LLAMA_ARG_*, LLAMA_API_KEY): a stage's environment must not change or lock its
    embedded server, and no secret of the stage reaches it."""
    names = set()
    try:
        from llama_cpp.server.settings import ModelSettings, ServerSettings
        names = {n.lower() for n in (*ServerSettings.model_fields, *ModelSettings.model_fields)}
    except ImportError:
        pass
    for var in list(os.environ):
        upper = var.upper()
        if (var.lower() in names or upper.startswith("LLAMA_")
                or any(word in upper for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))):
            del os.environ[var]


def _run_binary(parent_pid: int, command: list) -> None:
    """Run `command` as our child; stop it when the stage is gone, exit with it when it ends.

    A SIGTERM to the process group reaches both, and llama-server alone exits in ~0.1 s; a second signal would
    make it call exit() from its signal handler, so on a signal the launcher first waits for the child and passes
    the signal on only when the child is still there after GRACE_S (the signal was sent to the launcher alone);
    it kills the child STOP_S later. The main thread waits in short polls, never in one blocking wait(): the signal
    handler runs on the main thread, and its wait() cannot take the lock that a blocking wait() holds, so it used
    to sit out its whole timeout (every stop took 5.4 s, measured)."""
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def stop_child(signum, frame):
        if signum is None:  # orphaned: nobody signalled the child
            child.terminate()
        try:
            child.wait(timeout=GRACE_S if signum is not None else STOP_S)
        except subprocess.TimeoutExpired:
            if signum is not None:
                child.terminate()
            try:
                child.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                child.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop_child)
    signal.signal(signal.SIGHUP, stop_child)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid, lambda: stop_child(None, None)),
                     daemon=True).start()
    while True:
        try:
            sys.exit(child.wait(timeout=0.5))
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    parent_pid, rest = int(sys.argv[1]), sys.argv[2:]
    binary = None
    if rest[:1] == ["--exec"]:
        binary, rest = rest[1], rest[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if binary:
        _forget_settings_from_the_environment()
        _run_binary(parent_pid, [binary, *rest])
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _forget_settings_from_the_environment()
    _run_the_model_on_one_thread()
    sys.argv = ["llama_cpp.server", *rest]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
