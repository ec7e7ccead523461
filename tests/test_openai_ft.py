"""The OpenAI option: job payloads checked against the openai package's types of the documented shapes, training
files checked line by line, nothing submitted without a key, and a scripted API for submit, poll and record."""
from __future__ import annotations

import json

import httpx2
import openai
import pytest

from delib.run import files
from delib.run.config import validate_params
from delib.run.io import write_jsonl
from delib.training import openai_ft, published


def sft_lines(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"<think>\nr{i}\n</think>\na{i}"}]} for i in range(n)]


RL_ROWS = [{"prompt_id": f"p{i}", "prompt": f"q{i}", "category": "c", "expected_action": "refuse"} for i in range(12)]
SPEC = {"c": {"text": "[c-1] refuse this.", "tokens": 5}}


def test_supervised_payload_is_valid():
    payload = openai_ft.supervised_job("gpt-4.1-nano-2025-04-14", "file-abc", seed=3)
    assert openai_ft.validate_job(payload) == []
    assert payload["method"]["type"] == "supervised" and payload["seed"] == 3


def test_reinforcement_payload_with_a_score_model_grader_is_valid():
    grader = openai_ft.score_model_grader("gpt-4.1-2025-04-14", seed=0)
    payload = openai_ft.reinforcement_job("o4-mini-2025-04-16", "file-abc", grader, seed=0)
    assert openai_ft.validate_job(payload) == []
    text = json.dumps(grader["input"])
    assert "{{sample.output_text}}" in text and "{{item.spec_for_category}}" in text  # holds the spec
    assert "output_json" not in text and "reasoning" not in GRADER_TEMPLATE_FIELDS(text)  # sees the output only


def GRADER_TEMPLATE_FIELDS(text: str) -> str:
    """The {{...}} fields a grader template reads."""
    import re

    return " ".join(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text))


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.update(methd={}), "methd: unknown field"),
    (lambda p: p["method"].update(type="supervisd"), "method.type"),
    (lambda p: p["method"]["supervised"]["hyperparameters"].update(n_epoch=2), "n_epoch: unknown field"),
    (lambda p: p.update(model="gpt-3.5-turbo-0125"), "not among the documented supervised models"),
    (lambda p: p.pop("training_file"), "training_file"),
    (lambda p: p.update(suffix="x" * 65), "suffix"),
])
def test_payload_problems_are_named(change, problem):
    payload = openai_ft.supervised_job("gpt-4.1-nano-2025-04-14", "file-abc", seed=0)
    change(payload)
    problems = openai_ft.validate_job(payload)
    assert any(problem in p for p in problems), problems


def test_grader_typos_are_caught():
    grader = openai_ft.score_model_grader("gpt-4.1-2025-04-14", seed=0)
    grader["inputs"] = grader.pop("input")
    payload = openai_ft.reinforcement_job("o4-mini-2025-04-16", "file-abc", grader, seed=0)
    problems = openai_ft.validate_job(payload)
    assert any("inputs: unknown field" in p for p in problems) and any("input" in p for p in problems)


def test_training_files_are_checked(tmp_path):
    good = write_jsonl(tmp_path / "sft.jsonl", sft_lines(10))
    assert openai_ft.validate_training_file(good, "supervised") == (10, [])
    few = write_jsonl(tmp_path / "few.jsonl", sft_lines(2))
    assert any("at least 10" in p for p in openai_ft.validate_training_file(few, "supervised")[1])
    rft = write_jsonl(tmp_path / "rft.jsonl", openai_ft.reinforcement_rows(RL_ROWS, SPEC))
    assert openai_ft.validate_training_file(rft, "reinforcement") == (12, [])
    assert any("must end with the user's turn" in p for p in openai_ft.validate_training_file(good, "reinforcement")[1])


def test_reinforcement_rows_keep_the_spec_out_of_the_prompt():
    row = openai_ft.reinforcement_rows(RL_ROWS, SPEC)[0]
    assert row["messages"] == [{"role": "user", "content": "q0"}]  # the model must recall the spec
    assert row["spec_for_category"] == "[c-1] refuse this." and row["expected_action"] == "refuse"


def run_params(tmp_path, backend="openai"):
    return validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs"), "sft": {"backend": backend}})


def test_without_a_key_nothing_is_submitted(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(openai_ft, "api_key", lambda *a, **k: None)
    path = write_jsonl(tmp_path / "sft.jsonl", sft_lines(10))
    payload = openai_ft.supervised_job("gpt-4.1-nano-2025-04-14", "<file>", 0)
    params = run_params(tmp_path)
    record = openai_ft.run_job(params, "04_sft", path, payload)
    assert not record["submitted"] and "no API key (OPENAI_API_KEY unset): nothing submitted" == record["reason"]
    assert files.read(params, files.OPENAI_JOB["sft"])["submitted"] is False  # 04_sft/openai_job.json
    trl = openai_ft.run_job(run_params(tmp_path, "trl"), "04_sft", path, payload)
    assert "payload built and checked only" in trl["reason"] and not trl["submitted"]


class FakeOpenAI:
    """The fine-tuning API as a scripted HTTP server: upload, create, then running, running, succeeded."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.statuses = iter(["running", "running", "succeeded"])

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append((request.method, request.url.path))
        job = {"id": "ftjob-1", "object": "fine_tuning.job", "created_at": 0, "model": "gpt-4.1-nano-2025-04-14",
               "organization_id": "org", "result_files": [], "seed": 0, "status": "queued",
               "training_file": "file-1", "fine_tuned_model": None, "finished_at": None, "error": None,
               "hyperparameters": {"n_epochs": "auto"}, "trained_tokens": None, "validation_file": None}
        if request.url.path.endswith("/files"):
            return httpx2.Response(200, json={"id": "file-1", "object": "file", "bytes": 1, "created_at": 0,
                                              "filename": "sft.jsonl", "purpose": "fine-tune", "status": "processed"})
        if request.method == "POST":
            body = json.loads(request.content)
            assert body["training_file"] == "file-1" and body["method"]["type"] == "supervised"
            return httpx2.Response(200, json=job)
        status = next(self.statuses)
        done = {"fine_tuned_model": "ft:gpt-4.1-nano-2025-04-14:org::abc"} if status == "succeeded" else {}
        return httpx2.Response(200, json={**job, "status": status, **done})


def test_submit_poll_and_record_the_fine_tuned_model(tmp_path, monkeypatch):
    fake = FakeOpenAI()
    client = openai.OpenAI(api_key="sk-test", base_url="http://fake-openai.invalid/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(fake.handler)))
    params = run_params(tmp_path)
    path = write_jsonl(tmp_path / "sft.jsonl", sft_lines(10))
    payload = openai_ft.supervised_job(params.sft.openai_model, "<file>", 0)
    record = openai_ft.run_job(params, "04_sft", path, payload, client=client, poll_s=0)
    assert record["submitted"] and record["fine_tuned_model"] == "ft:gpt-4.1-nano-2025-04-14:org::abc"
    assert [m for m, _ in fake.requests] == ["POST", "POST", "GET", "GET", "GET"]
    role = published.served_role(params, "sft")  # the evaluation stage queries it like any openai model
    assert role.backend == "openai" and role.model == record["fine_tuned_model"]


def test_the_shutdown_date_is_enforced(tmp_path, monkeypatch):
    import datetime as dt

    class Later(dt.date):
        @classmethod
        def today(cls):
            return dt.date(2027, 1, 6)

    monkeypatch.setattr(openai_ft.dt, "date", Later)
    path = write_jsonl(tmp_path / "sft.jsonl", sft_lines(10))
    payload = openai_ft.supervised_job("gpt-4.1-nano-2025-04-14", "<file>", 0)
    record = openai_ft.run_job(run_params(tmp_path), "04_sft", path, payload, client=object())
    assert not record["submitted"] and "no new fine-tuning jobs since 2027-01-06" in record["reason"]
