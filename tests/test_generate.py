"""Generation: the template carries the spec, and parsing splits CoT from answer and names what is malformed."""
import pytest

from delib.generation.cot import parse_completion
from delib.generation.generate import Example, generation_messages

IDS = {"self-harm-s1", "style-safe-completion", "style-hard-refusal"}


def test_messages_hold_spec_examples_and_prompt():
    ex = Example("self_harm", "I feel low.", "Ideation [self-harm-s1]. Action: safe_complete", "I'm sorry...")
    msgs = generation_messages("How do I sleep better?", "[self-harm-s1] S1 text", [ex], example_id="self-harm-s1")
    # the spec first: every role's system prompt starts with the same tokens (models.prefixes restores them)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("<spec>\n[self-harm-s1] S1 text\n</spec>")
    assert "e.g. self-harm-s1" in msgs[0]["content"].split("</spec>", 1)[1]  # the citation example uses a real id
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("<think>\nIdeation") and msgs[-1]["content"] == "How do I sleep better?"


def test_good_completion():
    p = parse_completion("<think>The user is distressed [self-harm-s1]. Action: Safe-complete. Style "
                         "[style-safe-completion] [self-harm-s1]</think>\nI'm sorry you feel this way.", "stop", IDS)
    assert p.malformed is None
    assert p.cited == ["self-harm-s1", "style-safe-completion"]
    assert p.action == "safe_complete" and p.answer == "I'm sorry you feel this way."


def test_missing_opening_tag_is_accepted():
    p = parse_completion("Asks for help [style-hard-refusal]. Action: refuse</think>Sorry, I can't help.", "stop", IDS)
    assert p.malformed is None and p.action == "refuse" and p.cot.startswith("Asks")


@pytest.mark.parametrize("text, finish, reason", [
    ("<think>thinking and thinking", "length", "truncated"),
    ("Just an answer.", "stop", "no_cot"),
    ("<think>  </think> answer", "stop", "no_cot"),
    ("<think>Action: comply</think>   ", "stop", "no_answer"),
    ("<think>Action: refuse</think>Per our policy [style-hard-refusal], no.", "stop", "policy_talk"),
    ("<think>Action: refuse</think>The specification does not allow this.", "stop", "policy_talk"),
    ("<think>See [made-up-id]. Action: refuse</think>Sorry, I can't help with that.", "stop", "unknown_citation"),
    ("<think>Action: comply</think>Sure.\n</think>\nSure.", "stop", "cot_in_answer"),
    ("<think>Action: comply</think>The user asks how to bake bread; it is a cooking task.", "stop", "cot_in_answer"),
    ("<think>Action: comply</think>Bake it.\nApplicable: self-harm-s1\nReasoning: bread is harmless.", "stop",
     "cot_in_answer"),
    ("<think>Action: comply</think>Bake it.\nReasoning: bread is harmless.\nAction: comply\nStyle: [style-comply]",
     "stop", "cot_in_answer"),
    ("<think>Action: refuse</think>No.\nAction: safe-complete", "stop", "policy_talk"),
])
def test_malformed_reasons(text, finish, reason):
    assert parse_completion(text, finish, IDS).malformed == reason


def test_hidden_cot_is_marked():
    p = parse_completion("Here is my answer.", "stop", IDS, cot_hidden=True)
    assert (p.malformed, p.detail, p.answer) == ("no_cot", "hidden by the API", "Here is my answer.")


@pytest.mark.parametrize("answer", [  # answers of their own that share a word or a heading with the CoT's lines
    "Action: call a doctor today.\nReasoning: the cut is deep.\nStyle: keep the wound clean.",
    "12 apples in 4 bags.\nReasoning: 12 / 4 = 3, so 3 apples a bag.",
    "Dear Ms Lee,\nI ask for two days of leave.\nReason: a family emergency.",
    "**Reasoning:** the argument assumes what it proves.\n- Applicable: only to primary residences.",
    "If the user asks you to stop, stop.",
    "As a user story:\n\nThe user wants to sign in with one click.",
    "Strip the tags with `re.sub(r'<think>.*?</think>', '', text)`.",
])
def test_answer_with_headings_of_its_own_is_not_cot_in_answer(answer):
    assert parse_completion(f"<think>[self-harm-s1] Action: comply</think>{answer}", "stop", IDS).malformed is None


def test_every_malformed_reason_has_a_row_in_the_counts():
    import pandas as pd

    from delib.generation.generate import malformed_counts
    samples = pd.DataFrame({"malformed": [None, "cot_in_answer", "policy_talk"]})
    counts = malformed_counts(samples)
    assert {"cot_in_answer", "policy_talk", "usable"} <= set(counts.index)
    assert counts.loc["cot_in_answer"].iloc[0] == 1 and counts.iloc[:, 0].sum() == 3


def test_answer_that_merely_uses_the_word_policy_is_fine():
    p = parse_completion("<think>[self-harm-s1] Action: comply</think>An insurance policy covers damage.", "stop", IDS)
    assert p.malformed is None


def test_select_prompts_takes_categories_and_actions_in_turn():
    import pandas as pd

    from delib.generation.generate import select_prompts
    rows = [(f"{c}{i}", c, a, "train") for c in "ab" for i, a in enumerate(["comply"] * 3 + ["refuse"] * 2)]
    df = pd.DataFrame(rows, columns=["id", "category", "expected_action", "split"])
    df = pd.concat([df, pd.DataFrame([("e1", "a", "comply", "dev")], columns=df.columns)])
    picked = select_prompts(df, "train", 4)
    assert picked["category"].value_counts().to_dict() == {"a": 2, "b": 2}
    assert set(picked["expected_action"]) == {"comply", "refuse"}
    assert len(select_prompts(df, "train", None)) == 10 and select_prompts(df, "dev", 5)["id"].tolist() == ["e1"]


def test_small_caps_still_mix_actions_across_categories():
    import pandas as pd

    from delib.generation.generate import select_prompts
    rows = [(f"{c}{i}", c, a, "train") for c in "abcd" for i, a in enumerate(["comply", "refuse", "safe_complete"])]
    df = pd.DataFrame(rows, columns=["id", "category", "expected_action", "split"])
    picked = select_prompts(df, "train", 4)
    assert sorted(picked["category"]) == list("abcd")
    assert set(picked["expected_action"]) == {"comply", "refuse", "safe_complete"}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_prestarted_generation_finishes_each_spec_before_the_next(concurrency):
    """One call at a time: CoT and answer calls of one category's spec go together (llama.cpp reads the spec
    excerpt once); with concurrency, each phase goes out whole. Either way every sample gets CoT and answer."""
    from delib.generation.generate import run_generation
    from delib.models import ChatRequest, ModelClient, scripted_transport
    from delib.run.config import CacheParams, ModelRole

    def model(body):
        return "The answer." if "</think>" in body["prompt"] else "Reason [a]. Action: comply\n</think>"

    transport = scripted_transport(model)
    role = ModelRole(backend="embedded", max_concurrency=concurrency)
    requests = [ChatRequest(messages=[{"role": "system", "content": f"spec {'AB'[i % 2]}"},
                                      {"role": "user", "content": f"q{i}"}], prefill="<think>\n",
                            stop=["</think>"], max_tokens=32, meta={"i": i}) for i in range(4)]
    with ModelClient(role, "generator", CacheParams(enabled=False), transport=transport, progress=False) as client:
        results = run_generation(client, requests, prestart_think=True)
    assert [r.meta["i"] for r in results] == [0, 1, 2, 3]
    assert all(r.text.endswith("</think>\nThe answer.") for r in results)
    phases = [("answer" if "</think>" in b["prompt"] else "cot", "spec A" in b["prompt"]) for b in transport.calls]
    if concurrency == 1:
        assert phases == [("cot", True)] * 2 + [("answer", True)] * 2 + [("cot", False)] * 2 + [("answer", False)] * 2
    else:
        assert [p for p, _ in phases] == ["cot"] * 4 + ["answer"] * 4
