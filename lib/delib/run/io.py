"""Files every stage writes and reads: atomic JSON, JSONL, file hashes, and text clipped for display.

One implementation of each, so that every artifact of a run is written the same way (a reader never sees half a
file, even when the writer is killed) and every hash of a file is the same hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

_FILE_DIGESTS: dict[tuple, str] = {}
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, as a plain open() would apply it


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` through a temporary file, fsync and os.replace; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file owner-only; a run's files are read like any file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON, indented, keys in the order given; values JSON lacks (paths, timestamps) written as strings."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line (the form datasets, the fine-tuning APIs and pandas read), written atomically."""
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object raises `error` with
    `file:line:` and why."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{lineno}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    return rows


def sha256_file(path: str | Path) -> str:
    """sha256 of a file (model weights, adapters, inputs), remembered per (path, size, mtime) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_DIGESTS[memo] = h.hexdigest()
    return _FILE_DIGESTS[memo]


def hash_tree(folder: str | Path, h: "hashlib._Hash", skip: tuple[str, ...] = ()) -> None:
    """Feed `h` every file under `folder` (its relative path and its sha256), in a fixed order; names in `skip`
    are left out."""
    folder = Path(folder)
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip):
        h.update(str(f.relative_to(folder)).encode())
        h.update(sha256_file(f).encode())


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents): what a model's weights are, wherever they lie."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    hash_tree(path, h)
    return h.hexdigest()


def clip(text: Any, width: int) -> str:
    """`text` on one line (runs of white space folded), cut to `width` characters with an ellipsis; a missing
    value (None, or NaN as pandas reads an empty cell) is the empty string, never "nan"."""
    missing = text is None or (isinstance(text, float) and text != text)
    one_line = " ".join(("" if missing else str(text)).split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (quotes stripped, comments and `export` ignored)."""
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.removeprefix("export ").split("=", 1)
        values[name.strip()] = value.strip().strip("'\"")
    return values


def env_value(var: str, env_file: Path) -> Optional[str]:
    """A variable from the environment, else from the .env file; None when neither has it."""
    return os.environ.get(var) or read_dotenv(env_file).get(var)
