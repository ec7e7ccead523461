"""Stage 02, generation: for each training prompt the generator, shown the prompt and spec_for_category, writes
chains of thought that cite the spec and an answer; several samples a prompt, each kept with why it is malformed.

Steps: `plan` (the prompts, worked examples and requests), `generate` (the calls; samples.jsonl).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import pandas as pd

from delib.generation import generate as gen
from delib.models import ChatRequest, ModelClient
from delib.spec.overview import read_outputs
from delib.spec.document import Spec
from delib.run import files, templates
from delib.run import stages as st
from delib.run.config import RunParams
from delib.run.paths import examples_path

STAGE = st.GENERATE


@dataclass
class Plan:
    spec: Spec
    prompts: pd.DataFrame           # every prompt of stage 01
    selected: pd.DataFrame          # the training prompts to generate for
    examples: list                  # the worked examples shown (k_shot of the prompt's category)
    requests: list[ChatRequest]     # samples_per_prompt per selected prompt
    structured: bool                # the CoT under the spec's skeleton grammar (generate.structured)

    @property
    def hinted(self) -> int:
        """How many selected prompts the generator is told the level of (generate.level_hint)."""
        return len({r.meta["prompt_id"] for r in self.requests if r.meta["told_level"]})


def plan(params: RunParams) -> Plan:
    """The training prompts (capped by generate.max_prompts, categories and actions in turn), the worked examples,
    and one request per sample: the generator's template with spec_for_category and the prompt."""
    g = params.generate
    spec, prompts, rendered = read_outputs(params)
    selected = gen.select_prompts(prompts, "train", g.max_prompts)
    examples = gen.load_examples(examples_path(params), spec) if examples_path(params) and g.k_shot else []
    structured = gen.structured_for(params)
    requests = gen.generation_requests(selected, rendered, spec, examples, g.k_shot, g.samples_per_prompt,
                                       g.prestart_think, g.cot_max_tokens, structured,
                                       templates.load_template("generator", params), g.level_hint)
    return Plan(spec, prompts, selected, examples, requests, structured)


def generate(params: RunParams, plan: Plan) -> pd.DataFrame:
    """Every request through the cached client (a resumed run makes only the calls not yet answered); the samples,
    one per request, failed ones included, written to samples.jsonl."""
    with ModelClient.for_run(params, params.models.generator, "generator", STAGE) as client:
        # with prestart_think, two calls a sample: the CoT until </think>, then the answer after it
        results = gen.run_generation(client, plan.requests, params.generate.prestart_think, params.generate.batch)
        cot_hidden = client.is_reasoning_model()
    samples = gen.samples_table(plan.selected, results, plan.spec, cot_hidden)
    files.write(params, files.SAMPLES, samples)
    return samples


def run(params: RunParams) -> dict:
    """The whole stage: plan, generate."""
    p = plan(params)
    samples = generate(params, p)
    return {"prompts": len(p.selected), "requests": len(p.requests), "samples": len(samples),
            "well_formed": int(samples["malformed"].isna().sum()) if len(samples) else 0,
            "failed_requests": int((samples["malformed"] == "request_failed").sum()) if len(samples) else 0}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
