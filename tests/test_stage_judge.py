"""Stage 03 as a plain Python task: gate, judge k times, score, filter, hand the SFT and RL sets on, with scripted
fake models for the generator's samples and the judge (no server), every file through the run-file module."""
from __future__ import annotations

import json

import pytest

from delib.models import ModelClient, scripted_transport
from delib.run import files
from delib.run.config import CacheParams, validate_params


def _judge_reply(overall: int) -> str:
    return json.dumps({"action_correct": 8, "helpfulness": 7, "style": 6, "cot_quality": 5, "overall": overall,
                       "rationale": "fine"})


@pytest.fixture
def run_with_samples(tmp_path, root, monkeypatch):
    """A run through stage 02 on the default spec: 3 training prompts x 2 samples; sample 0 cites a level of the
    prompt's category with that level's action, sample 1 cites nothing (it fails the first gate)."""
    from delib.generation import generate
    from delib.generation.skeleton import choices
    from delib.spec.overview import read_outputs
    from delib.stages import s01_policy

    monkeypatch.setenv("DELIB_ROOT", str(root))

    def make(**sections):
        params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs"),
                                  "judge": {"max_prompts": 3, "k": 2, "temperature": 0.7, "threshold": 0.0,
                                            "gates": ["cites_level", "action_of_level"]}, **sections})
        s01_policy.run(params)
        spec, prompts, rendered = read_outputs(params)
        selected = generate.select_prompts(prompts, "train", 3)
        requests = generate.generation_requests(selected, rendered, spec, [], 0, 2)
        level = {r.prompt: next((sid, act) for sid, act, _ in choices(spec, r.category))
                 for r in selected.itertuples()}

        def generator(body) -> str:
            text = json.dumps(body)
            prompt = next(p for p in level if json.dumps(p)[1:-1] in text)
            sid, act = level[prompt]
            cites = f"Applicable: [{sid}]. " if body["seed"] % 2 == 0 else ""  # seed: run seed 0 + sample_index
            return f"<think>\nThe user asks for help. {cites}Action: {act}.\n</think>\nHere is my answer."
        with ModelClient(params.models.generator, "generator", CacheParams(enabled=False), progress=False,
                         transport=scripted_transport(generator)) as client:
            results = generate.run_generation(client, requests, prestart_think=False)
        files.write(params, files.SAMPLES, generate.samples_table(selected, results, spec))
        return params, selected
    return make


def _fake_models(monkeypatch, reply):
    """Every client stage 03 opens answers through `reply` (a function of the request body)."""
    calls = []

    def for_run(cls, params, role, role_name, stage, **kw):
        calls.append(role_name)
        return cls(role, role_name, CacheParams(enabled=False), progress=False,
                   transport=scripted_transport(reply))
    monkeypatch.setattr(ModelClient, "for_run", classmethod(for_run))
    return calls


def test_stage_03_gates_judges_k_times_filters_and_writes_the_training_sets(run_with_samples, monkeypatch):
    from delib.stages import s03_judge

    params, selected = run_with_samples()
    failing = selected.iloc[0]["prompt"]  # the judge's replies for this prompt are not JSON: it fails the judge step
    calls = _fake_models(monkeypatch, lambda body: "no verdict" if json.dumps(failing)[1:-1] in json.dumps(body)
                         else _judge_reply(6))

    g = s03_judge.gate(params)
    assert len(g.samples) == 6 and len(g.gated) == 3, "sample 1 of each prompt cites no level"
    assert [label for label, _ in g.steps] == ["gate: the CoT cites a level of the prompt's own category",
                                               "gate: its action is the one the cited level prescribes"]
    summary = s03_judge.run(params)
    assert calls == ["judge"], "no second judge unless models.second_judge is set"
    assert summary == {"samples": 6, "gated": 3, "judgements": 6, "failed_judgements": 2, "second_judgements": None,
                       "kept": 2, "sft": 2, "rl": summary["rl"]}

    judgements = files.read(params, files.JUDGEMENTS)
    assert sorted(judgements["judgement"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert judgements["prompt_id"].map(type).eq(str).all()
    scored = files.read(params, files.SCORED)
    assert sorted(scored["judged"].tolist()) == [0, 2, 2]
    funnel = files.read(params, files.FUNNEL)
    assert funnel["step"].tolist()[0] == "generated" and funnel["samples"].tolist() == [6, 6, 6, 3, 3, 2, 2, 2]
    sft = files.read(params, files.SFT_SET)
    assert {r["prompt_id"] for r in sft} == set(selected["id"].iloc[1:])
    assert files.read(params, files.SFT_OPENAI) == [{"messages": r["messages"]} for r in sft]
    assert len(files.read(params, files.RL_SET)) == summary["rl"] > 0
    for f in (files.SCORES_FIGURE, files.FUNNEL_FIGURE, files.SFT_HF):
        assert f.path(params).exists(), f.name
    assert not files.JUDGEMENTS_SECOND.path(params).exists()


def test_a_second_judge_grades_each_gated_sample_once(run_with_samples, monkeypatch):
    from delib.stages import s03_judge

    params, _ = run_with_samples(models={"second_judge": {"backend": "embedded"}})
    calls = _fake_models(monkeypatch, lambda body: _judge_reply(4))
    summary = s03_judge.run(params)
    assert calls == ["judge", "second_judge"] and summary["second_judgements"] == 3
    second = files.read(params, files.JUDGEMENTS_SECOND)
    assert second["judgement"].tolist() == [0, 0, 0] and second["overall"].tolist() == [4, 4, 4]
