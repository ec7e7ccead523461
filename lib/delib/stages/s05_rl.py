"""Stage 05, reinforcement learning: GRPO from the SFT checkpoint, rewarded by the spec-aware judge on the final answer
only (the CoT is cut off before anything grades it), with a KL penalty toward the SFT model.

Steps: `rl_set`, `train` (checkpoint, log, rewards.jsonl, curves.png), `rewards`, `ask` (held-out prompts to the
SFT and RL models), `openai_job` (rft_train.jsonl and the reinforcement job, built and checked), `status`.
`reward_of` is the notebook's demonstration of the reward, not a step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from delib import training
from delib.models import ModelClient
from delib.spec.overview import read_outputs
from delib.spec.document import Spec
from delib.run import files
from delib.run import stages as st
from delib.run.config import ModelRole, RunParams
from delib.training import openai_ft, published, rl
from delib.training.reward import AnswerReward

STAGE = st.RL


@dataclass
class RLSet:
    rows: list[dict]                # stage 03's RL prompts (capped at rl.max_prompts) with category, expected action
    spec: Spec
    prompts: pd.DataFrame           # every prompt of stage 01 (the held-out ones are asked after training)
    rendered: dict[str, dict]       # spec_for_category: what the judge holds for each category


@dataclass
class Asked:
    roles: dict[str, Optional[ModelRole]]  # the models asked: sft and rl (None: only stage 06 serves it)
    held_out: pd.DataFrame          # the held-out prompts asked
    answers: pd.DataFrame           # one row per (model, prompt), the reply split into CoT and answer


def rl_set(params: RunParams) -> RLSet:
    """Stage 03's RL prompts, with stage 01's spec, prompts and spec_for_category that the reward and `ask` need."""
    rows = rl.read_rl_set(params)
    spec, prompts, rendered = read_outputs(params)
    return RLSet(rows, spec, prompts, rendered)


def reward_of(params: RunParams, rl_set: RLSet, row: dict, completions: list[str]) -> tuple[list[float], str]:
    """The stage's reward, as GRPO computes it, of completions to one RL prompt (`row`), and all the text the judge
    was shown. Not a step (`run` does not call it): the notebook's demonstration that the reward reads the answer only."""
    prompt = [{"role": "user", "content": row["prompt"]}]
    n = len(completions)
    with ModelClient.for_run(params, params.models.judge, "judge", STAGE, progress=False) as judge:
        reward = AnswerReward.for_run(params, judge, rl_set.rendered)
        rewards = reward([prompt] * n, completions, category=[row["category"]] * n,
                         expected_action=[row["expected_action"]] * n)
    return rewards, "\n".join(m["content"] for messages in reward.last_messages for m in messages)


def train(params: RunParams) -> training.Trained:
    """GRPO (in this process, or under accelerate when rl.num_processes > 1): the checkpoint, log.jsonl,
    rewards.jsonl, training.json and served.json; then reward, KL and completion length per step drawn to curves.png."""
    return training.train(params, "rl", {"reward (answer only)": ["reward"], "KL to the SFT model": ["kl"],
                                          "completion length": ["completions/mean_length"]},
                          files.CURVES_PLOT.path(params))


def rewards(params: RunParams) -> pd.DataFrame:
    """Every completion GRPO sampled, graded (rewards.jsonl): its step, visible answer and reward parts."""
    return rl.read_rewards(params)


def ask(params: RunParams, rl_set: RLSet) -> Asked:
    """The held-out prompts of stage 04, without the spec, asked of the SFT and the RL model as they are served."""
    held_out = published.held_out_prompts(rl_set.prompts)
    roles = {"sft": published.served_role(params, "sft"), "rl": published.served_role(params, "rl")}
    answers = published.ask(params, roles, held_out, STAGE, rl_set.spec.sections)
    return Asked(roles, held_out, answers)


def openai_job(params: RunParams, rl_set: RLSet) -> dict:
    """The OpenAI option: the RL prompts as reinforcement fine-tuning rows (rft_train.jsonl) and a job with a
    score_model grader that holds the spec and sees the answer only; built, checked against the openai package's
    types, and submitted only with rl.backend openai and a key (openai_job.json)."""
    path = files.write(params, files.RFT_SET, openai_ft.reinforcement_rows(rl_set.rows, rl_set.rendered))
    grader = openai_ft.score_model_grader(params.rl.openai_grader_model, params.seed)
    payload = openai_ft.reinforcement_job(params.rl.openai_model, "<uploaded file id>", grader, params.seed)
    return openai_ft.run_job(params, STAGE, path, payload)


def status(params: RunParams, trained: training.Trained) -> dict:
    """What the stage made, for the evaluation stage and the report (status.json)."""
    s = trained.summary
    record = {"stage": STAGE, "implemented": True, "reward_first": s["reward_first"], "reward_last": s["reward_last"],
              "kl_last": s.get("kl_last")}
    files.write(params, files.STATUS["rl"], record)
    return record


def run(params: RunParams) -> dict:
    """The whole stage: the RL set, GRPO, the graded completions, a few answers, the OpenAI job, the status."""
    rl_data = rl_set(params)
    trained = train(params)
    graded = rewards(params)
    asked = ask(params, rl_data)
    job = openai_job(params, rl_data)
    done = status(params, trained)
    return {"prompts": len(rl_data.rows), "steps": trained.summary["steps"], "graded_completions": len(graded),
            "reward_first": done["reward_first"], "reward_last": done["reward_last"], "kl_last": done["kl_last"],
            "route": published.served_record(params, "rl")["route"], "answers": len(asked.answers),
            "openai_submitted": job["submitted"]}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
