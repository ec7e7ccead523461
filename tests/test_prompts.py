"""Prompt sets: loaders with a column mapping, errors with file and line, XSTest, and the train/eval split."""
import json

import pytest

from delib.spec.prompts import PromptSetError, load_prompt_set, load_xstest, near_duplicates
from delib.spec.document import load_spec


def test_csv_with_column_mapping(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('key,question,topic,action,part\n1,"Hi, there",a,comply,train\n2,Bye,b,refuse,eval\n')
    df = load_prompt_set(f, {"id": "key", "prompt": "question", "category": "topic",
                             "expected_action": "action", "split": "part"})
    assert df[["id", "prompt", "category", "expected_action", "split"]].values.tolist() == [
        ["1", "Hi, there", "a", "comply", "train"], ["2", "Bye", "b", "refuse", "dev"]]  # "eval": dev's old name


def test_jsonl_and_forced_split(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "x", "category": "c", "expected_action": "safe_complete"}) + "\n")
    forced = load_prompt_set(f, split="test")
    assert forced["split"].tolist() == ["test"] and forced["split_source"].tolist() == ["params"]


@pytest.mark.parametrize("content, message", [
    ("id,prompt,category,expected_action,split\n1,x,c,comply,train\n2,y,c,maybe,train\n", "p.csv:3: expected_action 'maybe'"),
    ("id,prompt,category,expected_action,split\n1,x,c,comply,holdout\n", "p.csv:2: split 'holdout'"),
    ("id,prompt,category,expected_action,split\n1,,c,comply,train\n", "p.csv:2: missing value for column 'prompt'"),
    ("id,prompt,category,expected_action,split\n1,x,c,comply,train\n1,y,c,comply,eval\n", "p.csv:3: duplicate id '1' (first on line 2)"),
    ("id,prompt,category,expected_action,split\n", "p.csv: the prompt set has no rows"),
])
def test_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "p.csv"
    f.write_text(content)
    with pytest.raises(PromptSetError) as e:
        load_prompt_set(f)
    assert str(e.value).startswith(str(tmp_path / message)), str(e.value)


def test_category_must_be_in_spec(tmp_path, root):
    spec = load_spec(root / "specs" / "tiny" / "spec.md")
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,category,expected_action,split\n1,x,self_harm,comply,train\n2,y,arson,refuse,eval\n")
    with pytest.raises(PromptSetError, match=r"p.csv:3: category 'arson' is not in the spec"):
        load_prompt_set(f, spec=spec)


@pytest.mark.parametrize("level, message", [
    ("V9", "p.csv:3: level 'V9' is not a level of category 'violence_weapons' (its levels: V0, V1, V2, V3)"),
    ("V0", "p.csv:3: level V0 of 'violence_weapons' says comply, but expected_action is refuse"),
])
def test_a_level_must_be_one_of_the_categorys_with_the_expected_action(tmp_path, root, level, message):
    spec = load_spec(root / "specs" / "default" / "spec.md")
    f = tmp_path / "p.csv"
    f.write_text(f"id,prompt,category,expected_action,split,level\n1,x,violence_weapons,comply,train,\n"
                 f"2,y,violence_weapons,refuse,eval,{level}\n")
    with pytest.raises(PromptSetError) as e:
        load_prompt_set(f, spec=spec)
    assert str(e.value) == str(tmp_path / message)


def test_a_level_given_by_section_id_reads_as_its_name_and_an_empty_one_as_none(tmp_path, root):
    spec = load_spec(root / "specs" / "default" / "spec.md")
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,category,expected_action,split,level\n1,x,violence_weapons,comply,train,\n"
                 "2,y,violence_weapons,refuse,eval,violence-weapons-v3\n")
    levels = load_prompt_set(f, spec=spec)["level"]
    assert levels.isna().tolist() == [True, False] and levels[1] == "V3"


def test_bad_jsonl_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(PromptSetError, match=r"p.jsonl:2: not valid JSON"):
        load_prompt_set(f)


def test_xstest_from_shared_data(shared_data):
    df = load_xstest(shared_data / "xstest" / "xstest_prompts.csv")
    assert len(df) == 450
    assert df["expected_action"].value_counts().to_dict() == {"comply": 250, "refuse": 200}
    assert (df[df.expected_action == "refuse"]["xstest_type"].str.startswith("contrast_")).all()


def test_near_duplicates_are_found():
    import pandas as pd
    train = pd.DataFrame({"id": ["t1", "t2"], "prompt": ["How do I kill a Python process on Linux?",
                                                          "Write a poem about the sea."]})
    eval_ = pd.DataFrame({"id": ["e1", "e2"], "prompt": ["How can I kill a Python process on linux",
                                                         "What is the capital of France?"]})
    pairs = near_duplicates(train, eval_)
    assert pairs[["train_id", "eval_id"]].values.tolist() == [["t1", "e1"]]


def test_default_prompt_set(root):
    spec = load_spec(root / "specs" / "default" / "spec.md")
    df = load_prompt_set(root / "prompts" / "default.csv", spec=spec)
    per_category = df.groupby("category").size()
    assert set(per_category.index) == set(spec.categories)
    assert per_category.min() >= 15
    assert (df.groupby("category")["split"].apply(lambda s: (s == "dev").sum()) >= 4).all()
    assert (df.groupby("category")["expected_action"].apply(lambda s: (s == "comply").sum()) >= 3).all()
    assert df["level"].notna().all()  # every prompt names the level that applies (its action checked on load)
    leaks = near_duplicates(df[df.split == "train"], df[df.split == "dev"])
    assert leaks.empty, leaks[["train_prompt", "eval_prompt"]].to_string()


ALIASED = """---
actions: {help: comply, decline: refuse}
categories:
  pets:
    sections: [pets]
    levels:
      - {name: A, action: help, section: pets-a}
      - {name: B, action: decline, section: pets-b}
style: {}
---
# Pets {#pets}
About pets.
## A {#pets-a}
Care. **Action: help.**
## B {#pets-b}
Harm. **Action: decline.**
"""


def test_a_missing_expected_action_is_the_levels_and_the_specs_own_action_words_are_read(tmp_path):
    (tmp_path / "spec.md").write_text(ALIASED)
    spec = load_spec(tmp_path / "spec.md")
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,category,expected_action,split,level\n1,x,pets,,train,B\n2,y,pets,help,eval,\n"
                 "3,z,pets,decline,eval,pets-b\n")
    df = load_prompt_set(f, spec=spec)
    assert df["expected_action"].tolist() == ["refuse", "comply", "refuse"]
    assert df["action_source"].tolist() == ["level", "file", "file"]
    f.write_text("id,prompt,category,split\n1,x,pets,train\n")
    with pytest.raises(PromptSetError) as e:
        load_prompt_set(f, spec=spec)
    assert str(e.value).startswith(f"{f}:2: no expected_action and no level")


def test_rows_without_a_split_get_a_seeded_split_stratified_by_category_and_action(tmp_path):
    from delib.spec.prompts import load_prompt_sets
    from delib.run.config import PromptSetParams
    rows = [(f"{c}{a}{i}", c, a) for c in "xy" for a in ("comply", "refuse") for i in range(6)]
    f, g = tmp_path / "p.csv", tmp_path / "reversed.csv"
    f.write_text("id,prompt,category,expected_action\n" + "".join(f"{i},q {i},{c},{a}\n" for i, c, a in rows))
    g.write_text("id,prompt,category,expected_action\n" + "".join(f"{i},q {i},{c},{a}\n" for i, c, a in rows[::-1]))
    df = load_prompt_sets([PromptSetParams(path=str(f))], seed=3, dev_share=0.5)
    assert (df["split_source"] == "seeded").all()
    assert df.groupby(["category", "expected_action"])["split"].apply(lambda s: (s == "dev").sum()).tolist() == [3] * 4
    again = load_prompt_sets([PromptSetParams(path=str(g))], seed=3, dev_share=0.5)
    assert dict(zip(df["id"], df["split"])) == dict(zip(again["id"], again["split"]))  # file order does not matter
    other = load_prompt_sets([PromptSetParams(path=str(f))], seed=4, dev_share=0.5)
    assert dict(zip(df["id"], df["split"])) != dict(zip(other["id"], other["split"]))
    quarter = load_prompt_sets([PromptSetParams(path=str(f))], seed=3, dev_share=0.25)
    assert (quarter["split"] == "dev").sum() == 8  # round(1.5) = 2 of each group of 6, halves up


@pytest.mark.parametrize("sizes", [(3, 2), (1, 2, 2), (2, 2, 2, 5)])
def test_a_seeded_split_puts_every_group_of_two_or_more_in_both_splits(tmp_path, sizes):
    from delib.spec.prompts import load_prompt_sets
    from delib.run.config import PromptSetParams
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,category,expected_action\n" + "".join(
        f"g{g}-{i},q,c{g},{('comply', 'refuse')[g % 2]}\n" for g, n in enumerate(sizes) for i in range(n)))
    df = load_prompt_sets([PromptSetParams(path=str(f))], seed=0, dev_share=0.5)
    per_group = df.groupby("category")["split"].agg(lambda s: sorted(set(s)))
    assert all(splits == ["dev", "train"] for c, splits in per_group.items() if sizes[int(c[1:])] >= 2), per_group


def test_a_split_in_the_file_is_kept(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("id,prompt,category,expected_action,split\n1,x,c,comply,train\n2,y,c,comply,\n")
    from delib.spec.prompts import load_prompt_sets
    from delib.run.config import PromptSetParams
    df = load_prompt_sets([PromptSetParams(path=str(f))], seed=0, dev_share=1.0)
    assert df["split"].tolist() == ["train", "dev"] and df["split_source"].tolist() == ["file", "seeded"]


def test_an_id_used_by_two_prompt_sets_is_named_with_both_places(tmp_path):
    from delib.spec.prompts import load_prompt_sets
    from delib.run.config import PromptSetParams
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,prompt,category,expected_action,split\n1,x,c,comply,train\n2,y,c,comply,eval\n")
    b.write_text("id,prompt,category,expected_action,split\n3,z,c,comply,train\n2,w,c,refuse,eval\n")
    with pytest.raises(PromptSetError) as e:
        load_prompt_sets([PromptSetParams(path=str(a)), PromptSetParams(path=str(b))])
    assert str(e.value) == f"{b}:3: id '2' is also used by another prompt set ({a}:3)"


def test_stage_01s_prompt_table_reads_back_level_names_as_text(tmp_path):
    """A level named "1" must come back as "1", not 1.0, or the level gate and the level hint skip it."""
    import pandas as pd

    from delib.run import files
    files.write(tmp_path, files.PROMPTS, pd.DataFrame([{"id": "001", "level": "1"}, {"id": "002", "level": None}]))
    back = files.read(tmp_path, files.PROMPTS)
    assert back["id"].tolist() == ["001", "002"] and back["level"].iloc[0] == "1"


TEST_SPLIT_SHA256 = "e939514318b423dd9b5cc66738164e57ca2b69a2513a2d5a08f77d2b660dd5cc"  # prompts/README.md


def test_the_locked_test_split_is_unchanged_and_covers_every_level(root):
    """prompts/default_test.csv was written before any model answered it: its hash is recorded in prompts/README.md,
    and this fails when the file changes. 12 prompts a category, every level with the spec's action, no prompt a
    near-copy of default.csv's."""
    from delib.run.io import sha256_file
    from delib.spec.document import load_spec
    from delib.spec.prompts import load_prompt_set, near_duplicates

    path = root / "prompts" / "default_test.csv"
    assert sha256_file(path) == TEST_SPLIT_SHA256, "the locked test split changed (see prompts/README.md)"
    assert TEST_SPLIT_SHA256 in (root / "prompts" / "README.md").read_text()
    spec = load_spec(root / "specs" / "default" / "spec.md")
    test = load_prompt_set(path, spec=spec)
    assert len(test) == 84 and set(test["split"]) == {"test"} and test["id"].is_unique
    assert test.groupby("category").size().to_dict() == {c: 12 for c in spec.categories}
    known = load_prompt_set(root / "prompts" / "default.csv", spec=spec)
    assert set(zip(test["level"], test["expected_action"])) >= set(zip(known["level"], known["expected_action"]))
    assert not set(test["id"]) & set(known["id"])
    assert near_duplicates(known, test).empty
