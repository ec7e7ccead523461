"""The one implementation of each file helper: atomic JSON and JSONL, file hashes, clipping."""
import json

import pytest

from delib.run import io


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = io.write_json_atomic(tmp_path / "a.json", {"ok": 1})

    class Unserialisable:
        def __repr__(self):
            raise RuntimeError("cannot write this")

    with pytest.raises(RuntimeError, match="cannot write this"):
        io.write_json_atomic(path, {"bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_json_keeps_key_order_and_writes_what_json_lacks_as_text(tmp_path):
    path = io.write_json_atomic(tmp_path / "sub" / "b.json", {"z": 1, "a": tmp_path})
    assert list(json.loads(path.read_text())) == ["z", "a"] and str(tmp_path) in path.read_text()


def test_jsonl_is_one_object_per_line(tmp_path):
    rows = [{"text": "é\nline"}, {"n": 2}]
    path = io.write_jsonl(tmp_path / "r.jsonl", rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows


def test_sha256_changes_with_the_content(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    first = io.sha256_file(f)
    assert first == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    f.write_bytes(b"other content")
    assert io.sha256_file(f) != first


def test_clip_folds_white_space_and_marks_the_cut():
    assert io.clip("a  b\n c", 10) == "a b c"
    assert io.clip("x" * 20, 8) == "x" * 7 + "…" and len(io.clip("x" * 20, 8)) == 8
    assert io.clip(None, 5) == "" and io.clip(float("nan"), 5) == ""
