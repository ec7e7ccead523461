"""The model client's event loop thread and progress bar.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings


class LoopThread:
    """An asyncio loop in a daemon thread: lets synchronous code (and Jupyter cells) run async calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="delib-model-client", daemon=True)
        self.thread.start()

    def run(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            while not future.done():  # wake up now and then: a signal another thread received is handled here
                concurrent.futures.wait([future], timeout=0.1)
            return future.result()
        except KeyboardInterrupt:  # Ctrl-C / a Jupyter interrupt: stop the calls in flight, keep what finished
            future.cancel()
            try:
                future.result(timeout=10)
            except BaseException:
                pass
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


def progress_bar():
    """tqdm.auto's bar class: a widget in Jupyter with ipywidgets, else text (tqdm warns once about that: not here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


class Tracker:
    """Progress of one chat_many: the tqdm bar and the counts that go into usage.json."""

    def __init__(self, total: int, desc: str, show: bool) -> None:
        self.errors = self.cache_hits = 0
        self.bar = None
        if show:
            self.bar = progress_bar()(total=total, desc=desc, unit="call", dynamic_ncols=True, mininterval=0.2)
        self._lock = threading.Lock()

    def advance(self, n: int = 1, errors: int = 0, cache_hits: int = 0) -> None:
        with self._lock:
            self.errors += errors
            self.cache_hits += cache_hits
            if self.bar is not None:
                self.bar.set_postfix(errors=self.errors, cached=self.cache_hits, refresh=False)
                self.bar.update(n)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"errors={self.errors}, cached={self.cache_hits}, {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(errors=self.errors, cached=self.cache_hits, refresh=False)
            self.bar.close()
