"""Spec prefixes kept across llama-server processes, so that a stage reads each category's spec once per machine.

Every stage starts its own llama-server, and on a CPU reading a prompt is the slow part (~200 tokens/s here): the
generator, the judge, the RL reward and the spec-in-prompt variant each read the same ~1,800-token category spec
at the top of their system prompts. llama-server can save a slot's KV cache to a file and restore it into a slot
of another process (`--slot-save-path`, `POST /slots/{id}?action=save|restore`); a request on that slot then reads
only what follows the longest prefix it shares with the restored tokens (measured: 20 tokens read instead of
1,468). The client pins each of its workers to a slot; before a group of calls that share a first message, the
store restores the saved slot whose first message shares the longest prefix with it, and saves the slot after the
group. The files are keyed by the model's identity (weights, adapter, engine), beside the model-call cache.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import http.client
import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Optional

from delib.run.io import write_json_atomic

MIN_SHARED_CHARS = 1000  # a shorter common prefix is not worth a restore (a few hundred tokens at most)
INDEX = "index.json"  # file name -> the first message whose KV cache it holds


def common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


class PrefixStore:
    """The saved slots of one model in `folder`, restored into and saved from the slots of the server at `root`
    (its URL without /v1)."""

    def __init__(self, folder: Path, root: str):
        self.folder, self.root = Path(folder), root.rstrip("/")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.restored = self.saved = 0  # counts, for the tests and the log

    def _index(self) -> dict[str, str]:
        try:
            return json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def best(self, text: str) -> Optional[str]:
        """The saved file whose first message shares the longest prefix with `text`, if it is long enough."""
        index = {name: first for name, first in self._index().items() if (self.folder / name).is_file()}
        if not index:
            return None
        name = max(index, key=lambda n: common_prefix(index[n], text))
        return name if common_prefix(index[name], text) >= MIN_SHARED_CHARS else None

    async def restore(self, slot: int, text: str) -> bool:
        """Load the best saved prefix for `text` into `slot`; False when there is none or the server refuses it
        (the slot then reads the prompt whole, as without a store)."""
        name = self.best(text)
        if name is None:
            return False
        ok = await asyncio.to_thread(self._post, slot, "restore", name)
        self.restored += ok
        return ok

    async def save(self, slot: int, text: str) -> None:
        """Keep `slot`'s KV cache, which starts with `text`, unless that first message is kept already."""
        name = hashlib.sha256(text.encode()).hexdigest()[:24] + ".bin"
        if len(text) < MIN_SHARED_CHARS or (name in self._index() and (self.folder / name).is_file()):
            return
        if await asyncio.to_thread(self._post, slot, "save", name):
            # several workers of one client, or several processes, add entries at once
            with self._lock, open(self.folder / f".{INDEX}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                write_json_atomic(self.folder / INDEX, {**self._index(), name: text})
            self.saved += 1

    def _post(self, slot: int, action: str, name: str) -> bool:
        request = urllib.request.Request(f"{self.root}/slots/{slot}?action={action}",
                                         data=json.dumps({"filename": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status == 200
        except (OSError, http.client.HTTPException):  # an old file the server cannot read, a busy slot, a
            return False  # dropped connection: carry on without it
