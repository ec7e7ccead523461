"""Filtering: the funnel, threshold, best of n, the category cap, and the SFT / RL / export formats."""
import json

import pandas as pd
import pytest

from delib.judging.filtering import (
    export_hf_dataset,
    filter_samples,
    import_deliberative,
    openai_chat_rows,
    rl_rows,
    sft_rows,
)
from delib.run import files


@pytest.fixture
def generated():
    rows = [("p1", 0, "a", None), ("p1", 1, "a", None), ("p2", 0, "a", None), ("p2", 1, "a", "no_cot"),
            ("p3", 0, "b", None), ("p3", 1, "b", "request_failed")]
    df = pd.DataFrame(rows, columns=["prompt_id", "sample_index", "category", "malformed"])
    df["prompt"], df["cot"], df["answer"], df["expected_action"] = "Q", "I cite [x].", "A.", "comply"
    return df


def test_funnel(generated):
    scored = generated[generated.malformed.isna()].copy()
    scored["judged"] = [2, 2, 2, 0]
    scored["final_score"] = [9.0, 7.5, 8.0, 9.9]
    kept, funnel = filter_samples(scored, generated, threshold=7.0)
    assert funnel["samples"].tolist() == [6, 5, 4, 3, 3, 2]
    assert funnel["step"].tolist()[-1] == "best of n per prompt"
    assert kept[["prompt_id", "sample_index"]].values.tolist() == [["p1", 0], ["p2", 0]]
    kept, funnel = filter_samples(scored, generated, threshold=7.0, best_of_n=False, max_per_category=1)
    assert kept[["prompt_id", "sample_index"]].values.tolist() == [["p1", 0]]
    assert funnel["samples"].tolist()[-1] == 1
    kept, funnel = filter_samples(scored, generated, threshold=9.5)
    assert kept.empty and funnel["samples"].tolist()[-1] == 0


def test_sft_rows_drop_the_spec_and_keep_the_cot(generated, tmp_path):
    g = generated.iloc[:1].assign(final_score=9.0)
    rows = sft_rows(g)
    assert rows[0]["messages"] == [{"role": "user", "content": "Q"},
                                   {"role": "assistant", "content": "<think>\nI cite [x].\n</think>\nA."}]
    path = files.write(tmp_path, files.SFT_OPENAI, openai_chat_rows(rows))
    line = json.loads(path.read_text().splitlines()[0])
    assert list(line) == ["messages"] and line["messages"] == rows[0]["messages"]
    from datasets import load_from_disk
    ds = load_from_disk(str(export_hf_dataset(tmp_path / "hf", rows)))
    assert ds[0]["category"] == "a" and ds[0]["messages"][1]["role"] == "assistant"


def test_rl_rows_are_the_training_prompts():
    prompts = pd.DataFrame({"id": ["a", "b"], "prompt": ["x", "y"], "category": ["c", "c"],
                            "expected_action": ["refuse", "comply"], "split": ["train", "dev"]})
    assert rl_rows(prompts) == [{"prompt_id": "a", "prompt": "x", "category": "c", "expected_action": "refuse"}]


def test_import_external_deliberative_data(tmp_path):
    f = tmp_path / "ext.json"
    f.write_text(json.dumps([
        {"question": "Q1", "response": "<think>Fine [x]. Action: comply</think>Answer.", "category": "c"},
        {"question": "Q2", "response": "No reasoning here.", "category": "c"}]))
    rows, counts = import_deliberative(f, {"x"})
    assert len(rows) == 1 and rows[0]["expected_action"] == "comply"
    assert counts.to_dict("records") == [{"kept": 1, "no_cot": 1}]
    f.write_text("{broken")
    with pytest.raises(ValueError, match="ext.json:1: not valid JSON"):
        import_deliberative(f, set())


def test_selection_that_shares_the_evaluations_graders_is_disclosed_and_can_be_turned_off():
    """By default stage 03 selects with gates and score parts that stage 06 also grades with (citation checks, the
    response-type rules, the style score): the report lists them. independent_selection drops those gates and zeroes
    those weights, and then nothing is listed."""
    from delib.evaluation.findings import caveats
    from delib.judging.filtering import SHARED_GATES, selection, shared_with_evaluation
    from delib.run.config import validate_params

    shared = validate_params({"run_name": "x"}).judge
    said = shared_with_evaluation(shared)
    assert [g.split(" ")[0] for g in said["gates"]] == [g for g in shared.gates if g in SHARED_GATES]
    assert [w.split(" ")[0] for w in said["score_weights"]] == ["action", "citation", "style"]
    text = " ".join(caveats({"graders": {"sft_selection_shares_evaluation_graders": said}}))
    assert "gates cites_level (category_citation), applicable_level (citation_accuracy)" in text
    assert "judge.independent_selection: true" in text

    independent = validate_params({"run_name": "x", "judge": {"independent_selection": True}}).judge
    gates, weights = selection(independent)
    assert gates == ["style_of_action", "expected_action"]
    assert weights == {"judge": 0.5, "action": 0.0, "citation": 0.0, "style": 0.0}
    assert shared_with_evaluation(independent) == {"gates": [], "score_weights": []}
    said = caveats({"graders": {"sft_selection_shares_evaluation_graders": shared_with_evaluation(independent)}})
    assert "Stage 03 selected" not in " ".join(said)
    # a recipe that names only the judge's weight: the others keep their defaults in the final score, so they are
    # listed, and zeroed under independent selection
    partial = validate_params({"run_name": "x", "judge": {"score_weights": {"judge": 0.8}}}).judge
    assert [w.split(" ")[0] for w in shared_with_evaluation(partial)["score_weights"]] == ["action", "citation", "style"]
    alone = validate_params({"run_name": "x", "judge": {"score_weights": {"judge": 0.8},
                                                         "independent_selection": True}}).judge
    assert selection(alone)[1] == {"judge": 0.8, "action": 0.0, "citation": 0.0, "style": 0.0}
