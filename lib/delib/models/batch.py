"""The OpenAI Batch API path of the model client, for stages that can wait (up to 24 h) for half the price.

Writes the requests as JSONL into the stage folder, uploads it, creates the batch, polls it, downloads the
output and error files and maps lines back by `custom_id` (the cache key). The batch id is kept in the stage
folder, so an interrupted run picks the same batch up again instead of paying for a second one.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from delib.run.io import write_json_atomic

TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


class BatchTimeout(TimeoutError):
    """The batch did not finish in time; its id is kept, and the next run resumes it."""


def batch_state_path(state_dir: Path, label: str, custom_ids) -> Path:
    """One state file per role and set of requests: the same missing calls find the same batch."""
    digest = hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()[:16]
    return Path(state_dir) / f"{label}-{digest}.json"


async def run_batch(client, lines: dict[str, dict], state_dir: Path, label: str, poll_s: float,
                    timeout_s: float, note: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """custom_id -> {"body": chat completion dict} or {"error": str}, for every line the batch answered."""
    state_path = batch_state_path(state_dir, label, lines)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("batch_id"):
        batch = await client.batches.retrieve(state["batch_id"])
        if batch.status in ("failed", "expired", "cancelled") and not batch.output_file_id:
            state = {}  # nothing to salvage: start again
        else:
            note(f"resuming batch {batch.id}")
    if not state.get("batch_id"):
        jsonl = state_path.with_suffix(".jsonl")
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.write_text("".join(json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                                            ensure_ascii=False) + "\n" for key, body in lines.items()),
                         encoding="utf-8")
        uploaded = await client.files.create(file=(jsonl.name, jsonl.read_bytes()), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
        state = {"batch_id": batch.id, "input_file_id": uploaded.id, "requests": len(lines),
                 "created": time.time(), "status": batch.status}
        write_json_atomic(state_path, state)  # before polling: a killed run finds it
    deadline = time.monotonic() + timeout_s
    while batch.status not in TERMINAL:
        if time.monotonic() > deadline:
            raise BatchTimeout(f"batch {batch.id} still {batch.status} after {timeout_s:.0f} s; "
                               f"re-run the stage to resume it (state in {state_path})")
        counts = getattr(batch, "request_counts", None)
        note(f"batch {batch.status} {getattr(counts, 'completed', 0)}/{getattr(counts, 'total', 0)}")
        await asyncio.sleep(poll_s)
        batch = await client.batches.retrieve(batch.id)
    state.update(status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
    write_json_atomic(state_path, state)
    answers: dict[str, dict] = {}
    for file_id in (batch.error_file_id, batch.output_file_id):  # output last: it wins for a repeated id
        if file_id:
            answers.update(_read_lines(await _download(client, file_id)))
    return answers


async def _download(client, file_id: str) -> str:
    content = await client.files.content(file_id)
    return content.text if hasattr(content, "text") else (await content.aread()).decode()


def _read_lines(text: str) -> dict[str, dict]:
    answers = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        response, error = item.get("response") or {}, item.get("error")
        if response.get("status_code") == 200 and response.get("body"):
            answers[item["custom_id"]] = {"body": response["body"]}
        else:
            reason = (error or {}).get("message") or f"status {response.get('status_code')}"
            answers[item["custom_id"]] = {"error": reason, "body": None}
    return answers
