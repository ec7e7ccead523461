"""Stage 04, supervised fine-tuning: the policy is fine-tuned on stage 03's (prompt, CoT, answer) with the spec removed
from the prompt, so that it must recall the spec itself; the result is served like any model.

Steps: `sft_set`, `base_weights`, `train` (checkpoint, log, loss.png), `ask` (held-out prompts to base and SFT),
`openai_job` (the OpenAI option, built and checked), `status` (status.json).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from delib import training
from delib.spec.overview import read_outputs
from delib.run import files
from delib.run import stages as st
from delib.run.config import ModelRole, RunParams
from delib.training import openai_ft, published, sft, weights

STAGE = st.SFT


@dataclass
class Asked:
    route: str                      # how the SFT model is served (served.json): gguf_lora, transformers_serve, ...
    roles: dict[str, Optional[ModelRole]]  # the models asked: base, and sft (None: only stage 06 serves it)
    held_out: pd.DataFrame          # the held-out prompts asked
    answers: pd.DataFrame           # one row per (model, prompt), the reply split into CoT and answer


def sft_set(params: RunParams) -> list[dict]:
    """Stage 03's SFT set (the prompt without the spec, then the <think> CoT and the answer), capped at
    sft.max_prompts; an empty set stops the stage with the funnel that emptied it."""
    return sft.read_sft_set(params)


def base_weights(params: RunParams) -> str:
    """The weights training starts from: the embedded GGUF dequantized once (cached), or sft.base_model."""
    return weights.base_model(params)


def train(params: RunParams) -> training.Trained:
    """Fine-tune (in this process, or under accelerate when sft.num_processes > 1): the checkpoint, log.jsonl,
    training.json and served.json; then the loss and token accuracy per step drawn to loss.png."""
    return training.train(params, "sft", {"loss (assistant turn only)": ["loss"],
                                           "token accuracy": ["mean_token_accuracy"]}, files.LOSS_PLOT.path(params))


def ask(params: RunParams) -> Asked:
    """A few held-out prompts, without the spec, asked of the base model and of the SFT model as it is served."""
    spec, prompts, _ = read_outputs(params)
    held_out = published.held_out_prompts(prompts)
    roles = {"base": params.models.policy, "sft": published.served_role(params, "sft")}
    answers = published.ask(params, roles, held_out, STAGE, spec.sections)
    return Asked(published.served_record(params, "sft")["route"], roles, held_out, answers)


def openai_job(params: RunParams) -> dict:
    """The OpenAI option: a supervised job on stage 03's sft_openai.jsonl, built, checked against the openai
    package's types and submitted only with sft.backend openai and a key (openai_job.json)."""
    payload = openai_ft.supervised_job(params.sft.openai_model, "<uploaded file id>", params.seed)
    return openai_ft.run_job(params, STAGE, files.SFT_OPENAI.require(params), payload)


def status(params: RunParams, trained: training.Trained) -> dict:
    """What the stage made, for the evaluation stage and the report (status.json)."""
    record = {"stage": STAGE, "implemented": True, "route": published.served_record(params, "sft")["route"],
              "loss_first": trained.summary["loss_first"], "loss_last": trained.summary["loss_last"]}
    files.write(params, files.STATUS["sft"], record)
    return record


def run(params: RunParams) -> dict:
    """The whole stage: the SFT set, the base weights, training, a few answers, the OpenAI job, the status."""
    rows = sft_set(params)
    base = base_weights(params)
    trained = train(params)
    asked = ask(params)
    job = openai_job(params)
    done = status(params, trained)
    return {"examples": len(rows), "base_model": base, "steps": trained.summary["steps"],
            "loss_first": done["loss_first"], "loss_last": done["loss_last"], "route": done["route"],
            "answers": len(asked.answers), "openai_submitted": job["submitted"]}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
