"""Stage 05 (RL): GRPO (TRL) from the SFT checkpoint, rewarded by the spec-aware judge and rule checks on the final
answer only (`reward.AnswerReward`), with a KL penalty toward the SFT model.

A LoRA SFT checkpoint is trained on as it is (the same adapter); TRL keeps a frozen copy of it as the reference, so
the KL is measured against the SFT model. A full SFT checkpoint is trained in full, its copy the reference.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from delib.models import ModelClient
from delib.spec.overview import read_outputs
from delib.run import files, stages
from delib.run.paths import require, stage_dir
from delib.training import logs, loop, recipe, weights
from delib.training.errors import TrainingError
from delib.training.reward import AnswerReward

if TYPE_CHECKING:
    from datasets import Dataset

    from delib.run.config import RunParams

STAGE = stages.RL


def read_rl_set(params: "RunParams") -> list[dict]:
    """Stage 03's RL set (training prompts with category and expected action), capped at `rl.max_prompts`."""
    path = files.RL_SET.path(params)
    rows = files.read(params, files.RL_SET)
    if params.rl.max_prompts:
        rows = rows[: params.rl.max_prompts]
    if not rows:
        raise TrainingError(f"{path} has no prompts: the RL stage needs training prompts (prompts.sets with a "
                            "train split)")
    return rows


def rl_dataset(rows: list[dict]) -> "Dataset":
    """Conversational prompts (no spec: the policy must recall it) with what the reward needs beside them."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "prompt_id": r["prompt_id"],
                               "category": r["category"], "expected_action": r["expected_action"]} for r in rows])


def start_model(params: "RunParams"):
    """(model, tokenizer, peft_config, lora) to start GRPO from: the SFT checkpoint, or the base weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = recipe.torch_dtype(params.rl)
    base = weights.base_model(params)
    if not params.rl.from_sft:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(base)
        return model, tokenizer, recipe.lora_config(params.sft) if params.sft.lora else None, params.sft.lora
    checkpoint = require(params, stages.SFT, "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if (checkpoint / "adapter_config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        return PeftModel.from_pretrained(model, checkpoint, is_trainable=True), tokenizer, None, True
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype), tokenizer, None, False


def train(params: "RunParams") -> dict:
    """GRPO in this process; writes the checkpoint, log.jsonl, rewards.jsonl, training.json and what serving needs."""
    from trl import GRPOTrainer

    t0 = time.perf_counter()
    r = params.rl
    out = stage_dir(params, STAGE)
    n_threads = recipe.threads(r)
    rows = read_rl_set(params)
    _, _, rendered = read_outputs(params)
    with logs.quiet():
        model, tokenizer, peft_config, lora = start_model(params)
    tokenizer.padding_side = "left"  # generation pads on the left
    rewards_log = files.REWARDS.path(params)  # every graded completion, appended as GRPO asks for rewards
    rewards_log.unlink(missing_ok=True)
    clock = logs.step_clock(files.TRAINING_PROGRESS["rl"].path(params))
    with ModelClient.for_run(params, params.models.judge, "judge", STAGE, progress=False) as judge:
        reward = AnswerReward.for_run(params, judge, rendered, rewards_log if recipe.is_main_process() else None)
        with logs.quiet():
            trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=recipe.grpo_config(params, out / "trainer"),
                                  train_dataset=rl_dataset(rows), processing_class=tokenizer,
                                  peft_config=peft_config, callbacks=[clock])
        device = loop.fit(trainer, "rl", r, lora)
    if not recipe.is_main_process():
        return {}
    return loop.save(params, "rl", trainer, tokenizer, lora, clock, t0, {
        "prompts_available": len(rows), "prompts_seen": trainer.state.global_step * r.per_device_train_batch_size
        * r.gradient_accumulation_steps // r.num_generations, "from_sft": r.from_sft, "device": device, "threads": n_threads,
        "reward_calls": reward.calls})


def read_rewards(params: "RunParams"):
    """Every graded completion of the run (pandas), with its step, answer and reward parts; empty before GRPO ran."""
    return files.read(params, files.REWARDS, missing_ok=True)
