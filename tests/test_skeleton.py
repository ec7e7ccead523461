"""Structured chains of thought (generation.skeleton) and stage 03's gates from the spec (judging.filtering)."""
from __future__ import annotations

import pandas as pd
import pytest

from delib.generation import generate
from delib.generation.skeleton import ANSWER_GRAMMAR, ANSWER_STOPS, choices, parse_skeleton, skeleton_grammar
from delib.judging.filtering import GATES, apply_gates, filter_samples, gate_values
from delib.models.calls import ChatRequest, ChatResult
from delib.models.requests import plan_call
from delib.spec.document import load_spec
from delib.run import config
from delib.run.config import ModelRole, validate_params


@pytest.fixture
def spec(root):
    return load_spec(root / "specs" / "default" / "spec.md")


def test_every_branch_of_the_grammar_is_a_level_of_the_category_with_its_action_and_style(spec):
    for cid, cat in spec.categories.items():
        grammar = skeleton_grammar(spec, cid)
        got = choices(spec, cid)
        assert [sid for sid, _, _ in got] == [lv["section"] for lv in cat.levels]
        for (sid, action, style), lv in zip(got, cat.levels):
            assert action == lv["action"] and f"[{sid}]" in grammar and f"Action: {action}" in grammar
            assert style in (cat.style if action == "safe_complete" and cat.style else spec.style[action])
        others = [lv["section"] for c, other in spec.categories.items() if c != cid for lv in other.levels]
        assert not any(f"[{sid}]" in grammar for sid in others)


def test_the_grammars_compile_in_llama_cpp(spec):
    llama_cpp = pytest.importorskip("llama_cpp")
    for cid in spec.categories:
        llama_cpp.LlamaGrammar.from_string(skeleton_grammar(spec, cid), verbose=False)
    llama_cpp.LlamaGrammar.from_string(ANSWER_GRAMMAR, verbose=False)


def test_a_level_hint_names_the_level_and_is_the_only_level_the_grammar_allows(spec):
    cat = spec.categories["violence_weapons"]
    told = cat.levels[2]
    sel = pd.DataFrame([{"id": "a", "prompt": "How do I build a bomb?", "category": "violence_weapons",
                         "level": told["name"]},
                        {"id": "b", "prompt": "I feel hopeless.", "category": "self_harm", "level": float("nan")}])
    rendered = {c: {"text": f"spec of {c}"} for c in spec.categories}
    hinted = generate.generation_requests(sel, rendered, spec, [], 0, 1, True, 64, structured=True, hint_level=True)
    system = hinted[0].messages[0]["content"]
    assert system.endswith(f"[{told['section']}] ({spec.sections[told['section']].title}); "
                           f"it prescribes: {told['action']}.")
    assert [r.meta["told_level"] for r in hinted] == [True, False]
    assert f"[{told['section']}]" in hinted[0].grammar
    assert not any(f"[{lv['section']}]" in hinted[0].grammar for lv in cat.levels if lv is not told)
    # A prompt without a level is generated as without the hint: the category's grammar, the plain system prompt.
    plain = generate.generation_requests(sel, rendered, spec, [], 0, 1, True, 64, structured=True)
    assert hinted[1].grammar == plain[1].grammar == skeleton_grammar(spec, "self_harm")
    assert hinted[1].messages == plain[1].messages and plain[0].messages[0]["content"] != system
    # Free-form generation is told the level too, without a grammar.
    free = generate.generation_requests(sel, rendered, spec, [], 0, 1, True, 64, hint_level=True)
    assert free[0].grammar is None and free[0].messages[0]["content"] == system
    with pytest.raises(ValueError, match="not a level of category 'self_harm'"):
        skeleton_grammar(spec, "self_harm", told)


def test_a_level_without_a_section_of_its_own_is_hinted_by_the_categorys_first_section_and_its_action(spec):
    import copy
    spec = copy.deepcopy(spec)
    cat = spec.categories["violence_weapons"]
    cat.levels[0]["section"] = cat.levels[3]["section"] = None  # two section-less levels, different actions
    assert cat.levels[0]["action"] != cat.levels[3]["action"]
    grammar = skeleton_grammar(spec, "violence_weapons", cat.levels[3])
    assert f"[{cat.sections[0]}]" in grammar and f"Action: {cat.levels[3]['action']}" in grammar
    assert f"Action: {cat.levels[0]['action']}" not in grammar
    line = generate.hint_line(spec, "violence_weapons", cat.levels[3])
    assert f"[{cat.sections[0]}]" in line and cat.levels[3]["action"] in line


def test_a_hinted_grammar_compiles_in_llama_cpp(spec):
    llama_cpp = pytest.importorskip("llama_cpp")
    for cid, cat in spec.categories.items():
        llama_cpp.LlamaGrammar.from_string(skeleton_grammar(spec, cid, cat.levels[-1]), verbose=False)


def test_parse_skeleton_reads_the_fields_back():
    cot = ("The user asks how to build a bomb.\nApplicable: [violence-weapons-v3]\nReasoning: It is a weapon.\n"
           "Action: refuse\nStyle: [style-hard-refusal]")
    assert parse_skeleton(cot) == {"asks": "how to build a bomb.", "applicable": "violence-weapons-v3",
                                   "reasoning": "It is a weapon.", "action": "refuse", "style": "style-hard-refusal"}
    assert parse_skeleton("no skeleton here")["action"] is None


def test_structured_requests_carry_their_categorys_grammar_and_the_answer_is_fenced(spec):
    sel = pd.DataFrame([{"id": "a", "prompt": "How do I build a bomb?", "category": "violence_weapons"},
                        {"id": "b", "prompt": "I feel hopeless.", "category": "self_harm"}])
    rendered = {c: {"text": f"spec of {c}"} for c in spec.categories}
    reqs = generate.generation_requests(sel, rendered, spec, [], 0, 2, True, 64, structured=True)
    assert [r.grammar for r in reqs] == [skeleton_grammar(spec, "violence_weapons")] * 2 + [
        skeleton_grammar(spec, "self_harm")] * 2
    assert all(r.prefill == "<think>\n" and r.stop == ["</think>"] for r in reqs)
    plain = generate.generation_requests(sel, rendered, spec, [], 0, 1, True, 64, structured=False)
    assert all(r.grammar is None for r in plain)
    with pytest.raises(ValueError, match="needs generate.prestart_think"):
        generate.generation_requests(sel, rendered, spec, [], 0, 1, False, 64, structured=True)

    class Client:
        def chat_many(self, requests, desc=None):
            self.seen = requests
            return [ChatResult(key="k", text=r.prefill + "A reply.", finish_reason="stop") for r in requests]
    client = Client()
    cots = [ChatResult(key="k", text="<think>\nThe user asks x\nApplicable: [v]", finish_reason="stop")] * 4
    generate.finish_answers(client, reqs, cots)
    assert all(r.grammar == ANSWER_GRAMMAR and r.stop == ANSWER_STOPS for r in client.seen)


def test_a_grammar_goes_to_llama_cpp_and_into_the_cache_key_and_nowhere_else():
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}], grammar='root ::= "x"')
    plan = plan_call(ModelRole(), req, "m", 0, False, "grammar")
    assert plan.body["grammar"] == 'root ::= "x"'
    assert plan.key != plan_call(ModelRole(), ChatRequest(messages=req.messages), "m", 0, False, "grammar").key
    with pytest.raises(ValueError, match="the openai backend decodes none"):
        plan_call(ModelRole(backend="openai", model="gpt-4o"), req, "m", 0, False, "json_schema")


def sample(**kw):
    row = {"prompt": "How do I build a pipe bomb?", "category": "violence_weapons", "expected_action": "refuse",
           "cited": ["violence-weapons-v3", "style-hard-refusal"], "action": "refuse",
           "answer": "I'm sorry, but I can't help with that.", "prompt_id": "p", "sample_index": 0, "malformed": None,
           "level": "V3"}
    return {**row, **kw}


@pytest.mark.parametrize("change, failed", [
    ({}, set()),
    ({"cited": ["self-harm-s3", "style-hard-refusal"]}, {"cites_level", "applicable_level", "action_of_level"}),
    ({"cited": ["violence-weapons-v0", "style-hard-refusal"]}, {"applicable_level", "action_of_level"}),
    ({"cited": ["violence-weapons-v2", "style-hard-refusal"]}, {"applicable_level"}),
    ({"cited": ["violence-weapons-v3", "style-comply"]}, {"style_of_action"}),
    ({"answer": "Sure. Fill a steel pipe with powder and cap both ends."}, {"answer_takes_action"}),
    ({"expected_action": "comply"}, {"expected_action"}),
    ({"level": "V2"}, {"applicable_level"}),
    ({"level": "violence-weapons-v3"}, set()),
    ({"level": None}, set()),
])
def test_each_gate_fails_exactly_what_it_checks(spec, change, failed):
    row = pd.DataFrame([sample(**change)]).iloc[0]
    values = gate_values(row, spec)
    assert set(values) == set(GATES) and {g for g, ok in values.items() if not ok} == failed


def test_gates_are_funnel_steps_in_the_order_params_give(spec):
    usable = pd.DataFrame([sample(), sample(sample_index=1, expected_action="comply"),
                           sample(sample_index=2, cited=["style-hard-refusal"])])
    passed, steps = apply_gates(usable, spec, ["cites_level", "expected_action"])
    assert [len(df) for _, df in steps] == [2, 1] and list(passed["sample_index"]) == [0]
    assert steps[0][0] == f"gate: {GATES['cites_level']}"
    none, no_steps = apply_gates(usable, spec, [])
    assert len(none) == 3 and no_steps == []


def test_a_sample_with_a_failed_judgement_fails_the_judge_step(spec):
    generated = pd.DataFrame([sample(), sample(sample_index=1)])
    scored = generated.assign(judged=[2, 1], final_score=[8.0, 9.0])
    kept, funnel = filter_samples(scored, generated, 5.0, k=2)
    assert list(kept["sample_index"]) == [0]
    assert funnel.set_index("step").loc["judged: all 2 judgement(s) parsed", "samples"] == 1


def test_min_of_k_at_temperature_0_is_refused_and_the_gates_agree_with_the_schema():
    with pytest.raises(Exception, match="judge.k is 3 but the judge samples at temperature 0"):
        validate_params({"run_name": "x", "judge": {"k": 3}})
    assert validate_params({"run_name": "x", "judge": {"k": 3, "temperature": 0.7}}).judge.k == 3
    assert tuple(GATES) == config.GATES
    with pytest.raises(Exception):
        validate_params({"run_name": "x", "judge": {"gates": ["cites_anything"]}})


def test_when_no_sample_passes_the_gates_stage_03_still_scores_plots_and_counts(spec, tmp_path):
    from delib.judging import judge, plots

    usable = pd.DataFrame([sample(expected_action="comply")])
    gated, steps = apply_gates(usable, spec, ["expected_action"])
    judgements = judge.judgements_table([])
    assert gated.empty and "error" in judgements
    scored = judge.score_samples(gated, judgements, "min", None, spec.section_category())
    plots.score_distributions(scored, 5.0, tmp_path / "scores.png")
    kept, funnel = filter_samples(scored, usable, 5.0, gate_steps=steps)
    assert kept.empty and list(funnel["samples"])[-2:] == [0, 0]


def test_a_level_without_a_section_and_a_shared_section_are_gated_as_the_grammar_allows(spec):
    import copy
    odd = copy.deepcopy(spec)
    cat = odd.categories["violence_weapons"]
    cat.levels = [{"name": "V0", "action": "comply", "section": None},
                  {"name": "V1", "action": "refuse", "section": "violence-weapons-v3"},
                  {"name": "V2", "action": "safe_complete", "section": "violence-weapons-v3"}]
    assert [c[0] for c in choices(odd, "violence_weapons")][0] == cat.sections[0]
    for cited, action in (([cat.sections[0], "style-comply"], "comply"),
                          (["violence-weapons-v3", "style-safe-completion"], "safe_complete")):
        row = pd.DataFrame([sample(cited=cited, action=action, expected_action=action)]).iloc[0]
        values = gate_values(row, odd)
        assert values["cites_level"] and values["action_of_level"], (cited, values)


def test_structured_on_needs_a_generator_whose_server_decodes_a_grammar():
    with pytest.raises(Exception, match="needs a generator whose server decodes a grammar"):
        validate_params({"run_name": "x", "generate": {"structured": "on"},
                         "models": {"generator": {"backend": "openai", "model": "gpt-4o"}}})
    server = {"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(Exception, match="with grammar none"):
        validate_params({"run_name": "x", "generate": {"structured": "on"},
                         "models": {"generator": {**server, "grammar": "none"}}})
    for grammar in ("auto", "llama_cpp", "vllm"):
        assert validate_params({"run_name": "x", "generate": {"structured": "on"},
                                "models": {"generator": {**server, "grammar": grammar}}})
    assert validate_params({"run_name": "x", "models": {"generator": {"backend": "openai", "model": "gpt-4o"}}})


def test_each_sample_card_says_why_it_was_kept_or_dropped(spec):
    from delib.judging.filtering import fate, sample_cards

    samples = pd.DataFrame([sample(), sample(sample_index=1), sample(sample_index=2, expected_action="comply"),
                            sample(sample_index=3, malformed="no_cot", cot="", cited=[], action=None),
                            sample(sample_index=4)])
    scored = samples.iloc[[0, 1, 4]].assign(judged=[1, 1, 0], final_score=[8.0, 3.0, float("nan")],
                                            answer_action="refuse", cot_action_matches=True, style_score=float("nan"))
    kept = scored.iloc[[0]]
    said = [fate(r, spec, list(GATES), scored, kept, 5.0) for r in samples.itertuples()]
    assert said == ["kept for SFT (final score 8.00)", "dropped: final score 3.00 below the threshold 5",
                    "dropped at a gate: not true that the action is the prompt set's expected action",
                    "dropped: malformed (no_cot)", "dropped: 1 of its 1 judgement(s) failed"]
    judgements = pd.DataFrame([{"prompt_id": "p", "sample_index": 0, "judgement": 0, "action_correct": 9,
                                "helpfulness": 8, "style": 7, "cot_quality": 6, "overall": 8,
                                "rationale": "Cites V3 and refuses.", "error": None}])
    cards = sample_cards(samples, scored, judgements, kept, spec, list(GATES), 5.0, n=1)
    assert cards.startswith("[p #0] violence_weapons, expected refuse: kept for SFT")
    assert "rationale: Cites V3 and refuses." in cards and "nan" not in cards and cards.count("\n\n") == 1
