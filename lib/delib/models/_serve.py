"""Launcher of the embedded llama.cpp server: runs `llama_cpp.server` in this process and exits as soon as
the process that started it is gone, so that not even a SIGKILLed stage leaves an orphan server.

Run as a script (it imports nothing from delib): python _serve.py PARENT_PID -- <llama_cpp.server arguments>
"""
import asyncio
import functools
import os
import runpy
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:  # re-parented: the stage process died without stopping us
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
    """llama_cpp.server reads any setting it is not given from an environment variable of the same name
    (API_KEY, HOST, PORT, N_CTX, ...): a stage's environment must not change or lock its embedded server."""
    try:
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError:
        return
    names = {n.lower() for n in (*ServerSettings.model_fields, *ModelSettings.model_fields)}
    for var in list(os.environ):
        if var.lower() in names or any(word in var.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
            del os.environ[var]


if __name__ == "__main__":
    parent_pid, rest = int(sys.argv[1]), sys.argv[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _forget_settings_from_the_environment()
    _run_the_model_on_one_thread()
    sys.argv = ["llama_cpp.server", *rest]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
