"""Stages 04-05 without a model: params onto TRL's configs, the SFT and RL sets, bad input (empty set, no chat
template, out of memory), and the training log summaries."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from delib.run.config import ParamsError, validate_params
from delib.training import logs, recipe, rl, sft
from delib.training.errors import ChatTemplateError, EmptyDatasetError, OutOfMemoryError, TrainingError, oom_guard
from delib.training.weights import check_chat_template


def make_params(tmp_path, **sections):
    return validate_params({"run_name": "t", "outputs_dir": str(tmp_path / "outputs"), **sections})


def write_run(params, sft_rows=(), rl_rows=(), funnel=None):
    judge = Path(params.outputs_dir) / params.run_name / "03_judge"
    judge.mkdir(parents=True)
    (judge / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    (judge / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl_rows))
    if funnel is not None:
        funnel.to_csv(judge / "funnel.csv", index=False)
    return judge


def sft_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"<think>\nreason {i}\n</think>\nanswer {i}"}],
            "prompt_id": f"p{i}", "category": "c", "expected_action": "comply", "final_score": 8.0}


# ------------------------------------------------------------------------------------------------ params -> TRL

def test_sft_params_map_onto_trl(tmp_path):
    params = make_params(tmp_path, seed=7, sft={"max_steps": 3, "learning_rate": 1e-3, "max_length": 256,
                                                 "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3,
                                                 "trl_args": {"weight_decay": 0.01}})
    cfg = recipe.sft_config(params, tmp_path / "trainer")
    assert (cfg.max_steps, cfg.learning_rate, cfg.max_length, cfg.seed, cfg.data_seed) == (3, 1e-3, 256, 7, 7)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 3)
    assert cfg.completion_only_loss is True and cfg.packing is False  # the loss on the assistant turn only
    assert cfg.logging_steps == 1 and cfg.save_strategy == "no" and cfg.weight_decay == 0.01
    assert not cfg.bf16 and cfg.deepspeed is None


def test_grpo_params_map_onto_trl(tmp_path):
    params = make_params(tmp_path, rl={"num_generations": 2, "per_device_train_batch_size": 4, "beta": 0.1,
                                       "max_completion_length": 32, "temperature": 0.7})
    cfg = recipe.grpo_config(params, tmp_path / "trainer")
    assert (cfg.num_generations, cfg.beta, cfg.max_completion_length, cfg.temperature) == (2, 0.1, 32, 0.7)
    assert cfg.remove_unused_columns is False  # the reward reads category and expected_action


def test_trl_args_are_checked_by_their_params_key(tmp_path):
    with pytest.raises(TrainingError, match=r"sft\.trl_args\.no_such_field: SFTConfig has no field"):
        recipe.sft_config(make_params(tmp_path, sft={"trl_args": {"no_such_field": 1}}), tmp_path)
    with pytest.raises(TrainingError, match=r"rl\.trl_args\.seed: set by the recipe"):
        recipe.grpo_config(make_params(tmp_path, rl={"trl_args": {"seed": 3}}), tmp_path)


def test_lora_config_from_params(tmp_path):
    lora = recipe.lora_config(make_params(tmp_path, sft={"lora_r": 4, "lora_alpha": 8,
                                                         "lora_target_modules": ["q_proj"]}).sft)
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (4, 8, {"q_proj"})
    assert recipe.lora_config(make_params(tmp_path, sft={"lora_target_modules": ["all-linear"]}).sft).target_modules == "all-linear"


def test_rl_params_refuse_groups_that_do_not_fit(tmp_path):
    with pytest.raises(ParamsError, match="multiple of num_generations"):
        make_params(tmp_path, rl={"per_device_train_batch_size": 3, "num_generations": 2})
    with pytest.raises(ParamsError, match="unknown reward weight"):
        make_params(tmp_path, rl={"reward_weights": {"cot": 1.0}})
    with pytest.raises(ParamsError, match="max_steps 0 trains nothing"):
        make_params(tmp_path, sft={"max_steps": 0})


def test_example_gpu_recipe_is_valid(root):
    from delib.run.config import load_params

    params = load_params(root / "params" / "gpu_example.yaml")
    assert params.sft.dtype == "bfloat16" and params.sft.num_processes > 1 and params.rl.num_processes > 1
    assert params.sft.deepspeed["zero_optimization"]["stage"] == 2 and params.sft.base_model
    default = load_params(root / "params" / "default.yaml")
    assert set(params.sft.model_dump()) == set(default.sft.model_dump())  # same keys, bigger settings


# ------------------------------------------------------------------------------------------------ datasets

def test_sft_set_is_prompt_and_completion_messages(tmp_path):
    params = make_params(tmp_path, sft={"max_prompts": 2})
    write_run(params, [sft_row(i) for i in range(3)])
    rows = sft.read_sft_set(params)
    assert len(rows) == 2
    ds = sft.sft_dataset(rows)
    assert ds.column_names == ["prompt", "completion"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "question 0"}]
    assert ds[0]["completion"][0]["role"] == "assistant" and "<think>" in ds[0]["completion"][0]["content"]


def test_empty_sft_set_shows_the_funnel(tmp_path):
    params = make_params(tmp_path)
    funnel = pd.DataFrame([{"step": "generated", "samples": 28, "prompts": 14, "share": 1.0},
                           {"step": "well-formed", "samples": 3, "prompts": 3, "share": 0.1},
                           {"step": "final score >= 6", "samples": 0, "prompts": 0, "share": 0.0}])
    write_run(params, [], funnel=funnel)
    with pytest.raises(EmptyDatasetError) as err:
        sft.read_sft_set(params)
    text = str(err.value)
    assert "nothing survived filtering" in text and "judge.threshold" in text
    assert "generated" in text and "28 samples" in text and "final score >= 6" in text


def test_sft_row_must_end_with_the_assistant(tmp_path):
    params = make_params(tmp_path)
    bad = sft_row(0)
    bad["messages"] = bad["messages"][:1]
    write_run(params, [bad])
    with pytest.raises(TrainingError, match="row 1 is not a user turn followed by an assistant turn"):
        sft.read_sft_set(params)


def test_rl_set_keeps_what_the_reward_needs(tmp_path):
    params = make_params(tmp_path, rl={"max_prompts": 1})
    write_run(params, rl_rows=[{"prompt_id": "a", "prompt": "Q?", "category": "c", "expected_action": "refuse"},
                               {"prompt_id": "b", "prompt": "R?", "category": "c", "expected_action": "comply"}])
    rows = rl.read_rl_set(params)
    ds = rl.rl_dataset(rows)
    assert len(ds) == 1 and ds[0]["prompt"] == [{"role": "user", "content": "Q?"}]
    assert ds[0]["expected_action"] == "refuse" and ds[0]["category"] == "c"


# ------------------------------------------------------------------------------------------------ bad input

def test_a_model_without_a_chat_template_is_refused():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ChatTemplateError, match="no chat template.*chat_template_path"):
        check_chat_template(NoTemplate(), "some/base-model")

    class WithTemplate:
        chat_template = "{{ messages }}"

    check_chat_template(WithTemplate(), "ok")


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")])
def test_running_out_of_memory_names_the_settings_to_lower(tmp_path, error):
    params = make_params(tmp_path)
    with pytest.raises(OutOfMemoryError) as err:
        with oom_guard("sft", recipe.settings_for_advice(params.sft, lora=True), "cpu"):
            raise error
    text = str(err.value)
    assert "ran out of memory on cpu" in text
    for key in ("sft.per_device_train_batch_size: 4", "sft.max_length: 512", "sft.gradient_checkpointing"):
        assert key in text


def test_other_errors_pass_through_the_memory_guard(tmp_path):
    with pytest.raises(ValueError, match="not memory"):
        with oom_guard("rl", {}):
            raise ValueError("not memory")


# ------------------------------------------------------------------------------------------------ logs

def test_step_log_and_summary():
    history = [{"loss": 2.0, "num_tokens": 100.0, "step": 1, "epoch": 0.5},
               {"loss": 1.5, "num_tokens": 200.0, "step": 2, "epoch": 1.0},
               {"train_runtime": 3.0, "train_loss": 1.75, "step": 2}]
    log = logs.step_log(history, [1.0, 3.0])
    assert list(log["step"]) == [1, 2] and list(log["seconds"]) == [1.0, 3.0]
    s = logs.summarize("04_sft", log, [1.0, 3.0], 10.0, {"examples": 2})
    assert (s["steps"], s["loss_first"], s["loss_last"], s["tokens"]) == (2, 2.0, 1.5, 200)
    assert s["seconds_per_step_median"] == 2.0 and s["tokens_per_second"] == 50.0 and s["examples"] == 2


def test_speed_goes_to_usage_for_the_manifest(tmp_path):
    from delib.models.usage import read_usage

    log = logs.step_log([{"loss": 1.0, "num_tokens": 10.0, "step": 1}], [0.5])
    summary = logs.summarize("04_sft", log, [0.5], 1.0, {})
    logs.write(tmp_path, "sft", log, summary)  # the run folder: 04_sft/log.jsonl, training.json, usage.json
    usage = read_usage(tmp_path / "04_sft")["sft_trainer"]
    assert (usage.requests, usage.prompt_tokens, usage.wall_s) == (1, 10, 0.5)
    back_log, back = logs.read(tmp_path, "sft")
    assert back["loss_first"] == 1.0 and len(back_log) == 1


def test_progress_file_says_how_far_training_got(tmp_path):
    from transformers import TrainerState

    progress = tmp_path / "progress.json"
    progress.write_text('{"step": 7, "max_steps": 7}')  # left by an earlier run of the stage
    clock, state = logs.step_clock(progress), TrainerState(max_steps=5)
    clock.on_train_begin(None, state, None)
    assert json.loads(progress.read_text())["step"] == 0
    for step in (1, 2):
        clock.on_step_begin(None, state, None)
        state.global_step = step
        clock.on_step_end(None, state, None)
    report = json.loads(progress.read_text())
    assert (report["step"], report["max_steps"], len(clock.seconds)) == (2, 5, 2)
    state.is_world_process_zero = False  # another process of an accelerate launch writes nothing
    state.global_step = 3
    clock.on_step_end(None, state, None)
    assert json.loads(progress.read_text())["step"] == 2


def test_no_spec_text_reaches_the_sft_set_although_the_generator_was_shown_the_spec(tmp_path, root, monkeypatch):
    """The paper's SFT data is (prompt, CoT, answer) with the spec taken out of the context: the model must learn
    the spec, not read it. Built the way stages 02-03 build it, from generation requests whose context holds the
    spec, with a generator that cites ids but never quotes the spec."""
    from delib.generation import generate
    from delib.judging import filtering
    from delib.models import ModelClient, scripted_transport
    from delib.spec.overview import load_inputs, render_all
    from delib.run.config import CacheParams, ModelRole

    monkeypatch.setenv("DELIB_ROOT", str(root))
    params = make_params(tmp_path, generate={"prestart_think": False, "structured": "off"})
    spec, prompts = load_inputs(params)
    selected = generate.select_prompts(prompts, "train", 6)
    examples = generate.load_examples(root / "specs/default/examples.yaml", spec)
    requests = generate.generation_requests(selected, render_all(spec), spec, examples, 1, 1)
    spec_lines = {line.strip() for s in spec.sections.values() for line in s.body.splitlines()
                  if len(line.strip()) >= 40}
    context = "\n".join(m["content"] for r in requests for m in r.messages)
    assert sum(line in context for line in spec_lines) >= 10, "the generator was not shown the spec: nothing to leak"

    reply = "<think>\nThe user asks for help. Applicable: [{id}]. Action: comply.\n</think>\nHere is my answer."
    client = ModelClient(ModelRole(), "generator", CacheParams(enabled=False), seed=0,
                         transport=scripted_transport(lambda body: reply.format(id=spec.categories[
                             selected.iloc[0]["category"]].sections[0])), progress=False)
    with client:
        results = generate.run_generation(client, requests, prestart_think=False)
    samples = generate.samples_table(selected, results, spec)
    scored = samples.assign(judged=1, final_score=10.0)
    kept, _ = filtering.filter_samples(scored, samples, threshold=0.0)
    rows = filtering.sft_rows(kept)
    assert len(rows) == len(selected)
    trained = (json.dumps(rows) + json.dumps(filtering.openai_chat_rows(rows))
               + json.dumps(sft.sft_dataset(rows).to_list()))
    leaked = [line for line in spec_lines if line in trained or json.dumps(line)[1:-1] in trained]
    assert leaked == []
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)


# ------------------------------------------------------------------------------------------------ run files

def test_each_training_stage_has_its_own_copy_of_the_files_both_write(tmp_path):
    from delib.run import files

    for both in (files.TRAINING_LOG, files.TRAINING_SUMMARY, files.SERVED, files.OPENAI_JOB, files.STATUS):
        assert both["sft"].path(tmp_path).parent == tmp_path / "04_sft" and both["rl"].stage == "05_rl"
        assert both["sft"].name == both["rl"].name and {both["sft"], both["rl"]} <= set(files.ALL)
    files.write(tmp_path, files.STATUS["rl"], {"stage": "05_rl", "implemented": True})
    assert files.read(tmp_path, files.STATUS["rl"])["implemented"] and not files.STATUS["sft"].path(tmp_path).exists()


def test_a_few_held_out_prompts_one_per_expected_action():
    from delib.training.published import held_out_prompts, section_of

    prompts = pd.DataFrame({"id": list("abcdef"), "split": ["train", "dev", "dev", "dev", "dev", "train"],
                            "expected_action": ["refuse", "comply", "comply", "refuse", "safe_complete", "comply"]})
    assert list(held_out_prompts(prompts)["id"]) == ["b", "d"]
    assert list(held_out_prompts(prompts, 5)["id"]) == ["b", "d", "e"]
    assert (section_of("04_sft"), section_of("05_rl")) == ("sft", "rl")


def test_base_weights_asked_by_two_processes_at_once_are_converted_once(tmp_path, monkeypatch):
    """make test runs three pytest processes at once, and each may ask for the converted base weights first: the
    lock makes the others wait for the folder the first one writes."""
    import threading
    import time

    from delib.training import weights

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"weights")
    converted = []

    def slow_convert(path, folder, digest):
        converted.append(folder)
        time.sleep(0.5)  # long enough for every other caller to arrive meanwhile
        folder.mkdir()
        (folder / weights.SOURCE_FILE).write_text("{}")
        return folder

    monkeypatch.setattr(weights, "_convert", slow_convert)
    found = []
    callers = [threading.Thread(target=lambda: found.append(weights.convert_gguf(gguf, tmp_path / "cache")))
               for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(converted) == 1 and len(found) == 3 and len(set(found)) == 1
    assert (found[0] / weights.SOURCE_FILE).is_file()
