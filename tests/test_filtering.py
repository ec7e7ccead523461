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
