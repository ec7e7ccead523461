"""The content-addressed cache of model calls, shared by every stage that calls a model.

One sqlite file in WAL mode, one commit per finished call: a stage killed mid-run (even by SIGKILL) keeps every
call that had finished, and its re-run only makes the missing ones. Keys hash what determines the answer (model
identity, messages, sampling, sample index, output schema), never the base URL or an API key.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

KEY_VERSION = 1  # bump when the meaning of a cached value changes


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def call_key(material: dict) -> str:
    """The cache key of one call: sha256 of the canonical JSON of what determines its answer."""
    return hashlib.sha256(canonical_json({"v": KEY_VERSION, **material}).encode("utf-8")).hexdigest()






class CacheError(RuntimeError):
    """The model-call cache file cannot be read; the message names the file and what to do."""


class CallCache:
    """sqlite store of finished calls: key -> JSON value. Safe across threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no committed row
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL, model TEXT, created REAL)"
            )
        except sqlite3.DatabaseError as e:
            raise CacheError(f"{self.path}: the model-call cache is not a readable sqlite database ({e}). It holds "
                             "finished model calls: move it aside rather than delete it, or point cache.path at a "
                             "new file; nothing was written to it.") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """The cached values of those keys that are cached."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # sqlite limits the number of bound parameters
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._db.execute(f"SELECT key, value FROM calls WHERE key IN ({marks})", chunk):
                    try:
                        found[key] = json.loads(value)
                    except json.JSONDecodeError:  # a damaged row: that call is made again, the row replaced
                        continue
        return found

    def get(self, key: str) -> Optional[dict]:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: dict, model: str = "") -> None:
        """Store one finished call and commit at once."""
        text = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, value, model, created) VALUES (?, ?, ?, ?)",
                (key, text, model, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class NoCache:
    """Stands in for CallCache when the cache is off in params."""

    path = None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        return {}

    def get(self, key: str) -> Optional[dict]:
        return None

    def put(self, key: str, value: dict, model: str = "") -> None:
        pass

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass
