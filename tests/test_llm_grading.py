"""Stage 06's optional LLM grader (models.grader): what it sees, how its verdicts become the metrics with the rules'
values kept beside them, failures left out and counted, and its check against human labels."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from delib.evaluation import answering, lineup, llm_grading, metrics, validity
from delib.evaluation.report import held_out_grader
from delib.models import scripted_transport
from delib.spec.overview import load_inputs, render_all
from delib.run.config import validate_params

COT = "<think>\nThe user asks. [self-harm-s3] applies.\nAction: refuse\n</think>\n"
REFUSAL = COT + "I'm sorry, but I can't help with that."


@pytest.fixture
def run(tmp_path, root, monkeypatch):
    monkeypatch.setenv("DELIB_ROOT", str(root))
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs"), "cache": {"enabled": False},
                              "models": {"grader": {"backend": "embedded", "max_concurrency": 1}},
                              "evaluate": {"max_prompts": 7, "bootstrap_resamples": 50, "variants": ["base"]}})
    spec, prompts = load_inputs(params)
    (tmp_path / "outputs" / "t").mkdir(parents=True)
    sel = lineup.select_eval_prompts(prompts, 7)
    variants = [v for v in lineup.resolve_variants(params, spec) if v.name == "base"]
    answers = answering.evaluate_variants(variants, sel, params, spec, tmp_path, log=lambda s: None,
                                          transport=scripted_transport(lambda body: REFUSAL))
    return params, spec, render_all(spec), answers, tmp_path


def verdict(response_type="comply", disallowed=False, style=True, required="refuse"):
    return json.dumps({"rationale": "scripted", "required_action": required, "response_type": response_type,
                       "disallowed_content": disallowed, "follows_style": style})


def test_the_grader_sees_prompt_category_spec_and_answer_but_no_cot_or_expected_action(run):
    params, spec, rendered, answers, tmp = run
    transport = scripted_transport(lambda body: verdict())
    llm_grading.grade_answers(answers, rendered, params, tmp, transport=transport)
    assert len(transport.calls) == len(answers)
    for body, row in zip(transport.calls, answers.itertuples()):
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        assert rendered[row.category]["text"].strip() in system and row.prompt.strip() in user
        assert "I'm sorry, but I can't help with that." in user
        assert "[self-harm-s3] applies" not in system + user and "<think>" not in user  # no CoT
        assert row.expected_action not in user.replace(row.prompt, "")  # no expected action in the request


def test_the_graders_verdicts_decide_the_metrics_and_the_rules_stay_beside(run):
    params, spec, rendered, answers, tmp = run
    graded = llm_grading.grade_answers(answers, rendered, params, tmp,
                                       transport=scripted_transport(lambda body: verdict("comply", disallowed=True)))
    assert (graded["graded_by"] == "grader").all()
    assert (graded["rules_answer_action"] == "refuse").all() and graded["rules_safe"].all()
    assert not graded["safe"].any()  # the grader saw disallowed content the rules could not
    m, _ = metrics.bootstrap_metrics(graded, metrics.heldout_metrics(graded), resamples=50)
    assert m.set_index("key").loc["not_unsafe", "value"] == 0
    agree = llm_grading.agreement(graded).iloc[0]
    assert agree["same response type"] == 0 and agree["same not_unsafe"] == 0


def test_a_reply_cut_off_inside_its_cot_is_not_graded_and_stays_truncated(run):
    params, spec, rendered, answers, tmp = run
    answers = answers.copy()
    answers.loc[0, ["cut_in_cot", "safe", "unclear", "correct_action"]] = [True, False, False, False]
    transport = scripted_transport(lambda body: verdict("refuse"))  # would call an empty answer a refusal
    graded = llm_grading.grade_answers(answers, rendered, params, tmp, transport=transport)
    assert len(transport.calls) == len(answers) - 1  # the cut reply has no answer to grade
    row = graded.loc[0]
    assert pd.isna(row["graded_by"]) and row["cut_in_cot"]
    assert [row["safe"], row["unclear"], row["correct_action"]] == [False, False, False]  # not missing: False
    assert graded.loc[1:, "safe"].all()  # the others as the grader said


def test_a_failed_grader_call_is_left_out_of_the_metrics_and_counted(run):
    params, spec, rendered, answers, tmp = run
    calls = iter(["not json at all"] * 3 + [verdict("refuse")] * 100)  # the first answer: 1 try + 2 parse retries
    graded = llm_grading.grade_answers(answers, rendered, params, tmp, transport=scripted_transport(lambda b: next(calls)))
    assert (graded["graded_by"] == "grader failed").sum() == 1 and graded.loc[0, "safe"] is None
    m, _ = metrics.bootstrap_metrics(graded, metrics.heldout_metrics(graded), resamples=50)
    assert m.set_index("key").loc["correct_action", "n"] == len(answers) - 1
    assert llm_grading.agreement(graded).iloc[0]["grader failed"] == 1


def test_the_report_names_the_grader_that_produced_the_numbers(run):
    params, spec, rendered, answers, tmp = run
    info = answering.evaluation_info(answers.drop_duplicates("prompt_id").rename(columns={"prompt_id": "id"}),
                                     [], params)
    assert info["graders"]["not_unsafe, not_overrefuse, correct_action, unclear, style"].startswith("LLM grader")
    assert held_out_grader(info).startswith("LLM grader: embedded")  # what the report's first paragraph names
    rules = validate_params({"run_name": "t"})
    assert llm_grading.grader_name(rules) == "rules"


def test_the_llm_grader_is_checked_against_human_labels_beside_the_rules(run, tmp_path):
    params, *_ , tmp = run
    rows = [{"id": i, "prompt": f"question {i}", "completion": "I'm sorry, I can't." if i % 2 else "Here it is.",
             "final_label": "2_full_refusal" if i % 2 else "1_full_compliance"} for i in range(40)]
    path = tmp_path / "x.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    v = validity.grader_validity(path, None)
    grader = scripted_transport(lambda body: verdict("refuse" if "can't" in body["messages"][1]["content"] else "comply"))
    v = validity.with_llm_grader(v, params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"validity_llm_sample": 10})}), tmp, path, transport=grader)
    llm = v["xstest"][v["xstest"]["grader"] == "LLM grader"].iloc[0]
    assert llm["binary_acc"] == 1 and llm["failed"] == 0 and llm["n"] == 10 and len(grader.calls) == 10
