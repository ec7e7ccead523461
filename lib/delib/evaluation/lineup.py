"""Stage 06: who answers and what: the held-out prompts, and the variants of the policy (base, spec in the
prompt, SFT, SFT+RL, extra models) with why one is unavailable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd

from delib.spec.document import Spec, spec_for_category
from delib.run import files, stages
from delib.run.config import ModelRole, RunParams
from delib.run.paths import stage_dir
from delib.run.providers import provider_for
from delib.run.templates import fill, load_template
from delib.training import published
from delib.training.published import SERVED_FILE

if TYPE_CHECKING:
    pass


STAGE = stages.EVALUATE




LABELS = {"base": "base", "base_skeleton": "base + CoT skeleton", "spec_prompt": "base + spec in prompt",
          "spec_prompt_skeleton": "spec in prompt + CoT skeleton", "sft": "SFT", "sft_rl": "SFT+RL",
          "chance_first": "chance: first level", "chance_uniform": "chance: a level at random"}
# References that answer nothing: what a citation scores by habit (grading.chance_answers), compared like variants
CHANCE = ("chance_first", "chance_uniform")
# What a trained variant is compared with for a primary result: the strongest of these on the metric
BASELINES = ("base", "base_skeleton", "spec_prompt", "spec_prompt_skeleton", *CHANCE)


TRAINED_STAGE = {"sft": stages.SFT, "sft_rl": stages.RL}




def select_eval_prompts(prompts: pd.DataFrame, max_prompts: Optional[int], split: str = "dev") -> pd.DataFrame:
    """Held-out prompts of `split` (dev, or the locked test), capped at `max_prompts` by taking categories in turn;
    each category gives the action it has given least so far, ties going to the action least represented overall,
    so that a small evaluation still has prompts to comply with, to refuse and to safe-complete."""
    rows = prompts[prompts["split"] == split]
    if max_prompts is None or max_prompts >= len(rows):
        return rows.sort_values(["category", "id"]).reset_index(drop=True)
    queues = {c: {a: list(g.sort_values("id").index) for a, g in group.groupby("expected_action")}
              for c, group in rows.groupby("category", sort=True)}
    overall = {a: 0 for a in sorted(rows["expected_action"].unique())}
    mine = {c: dict.fromkeys(q, 0) for c, q in queues.items()}
    picked: list[int] = []
    while len(picked) < max_prompts and any(any(q.values()) for q in queues.values()):
        for c, q in queues.items():
            left = [a for a in q if q[a]]
            if not left or len(picked) >= max_prompts:
                continue
            a = min(left, key=lambda a: (mine[c][a], overall[a], a))
            picked.append(q[a].pop(0))
            mine[c][a] += 1
            overall[a] += 1
    return rows.loc[picked].sort_values(["category", "id"]).reset_index(drop=True)


def select_by_type(df: pd.DataFrame, column: str, max_prompts: Optional[int]) -> pd.DataFrame:
    """A benchmark capped at `max_prompts`, taking its types (`column`) in turn, in file order within a type."""
    if max_prompts is None or max_prompts >= len(df):
        return df.reset_index(drop=True)
    queues = [list(g.index) for _, g in df.groupby(column, sort=True)]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return df.loc[sorted(order[:max_prompts])].reset_index(drop=True)


def whole_spec(spec: Spec) -> str:
    """The whole spec as one text, every section labelled with the id a chain of thought cites."""
    top = [s.id for s in spec.sections.values() if s.parent is None]
    return "\n\n".join(spec.full_text(sid) for sid in top)


def spec_system_prompt(spec: Spec, category: Optional[str] = None, template: Optional[str] = None) -> str:
    """The "spec in the system prompt" ablation: the generator's instructions with the spec. With `category`,
    that category's view of the spec (`spec_for_category`, what the generator is shown); without, the whole spec
    (the model is not told the prompt's category). `template`: the generator's (None: the default)."""
    template = template or load_template("generator")
    if category is not None:
        cat = spec.categories[category]
        example = next((lv["section"] for lv in cat.levels if lv["section"]), cat.sections[0])
        return fill(template, spec=spec_for_category(spec, category).strip(), example_id=example)
    first = next(iter(spec.categories.values()), None)
    example = (first.levels[0]["section"] if first and first.levels and first.levels[0]["section"]
               else next(iter(spec.sections)))
    return fill(template, spec=whole_spec(spec).strip(), example_id=example)


@dataclass
class Variant:
    """One model to evaluate, how it is asked, and whether it can be evaluated in this run."""

    name: str
    label: str
    role: Optional[ModelRole]
    source: str  # where the model comes from (params key or the stage file that names it)
    system_prompt: Optional[str] = None  # for every prompt (the whole spec), or for prompts without a category
    category_prompts: Optional[dict] = None  # category -> its own system prompt (the category's view of the spec)
    available: bool = True
    reason: str = ""  # why not available
    checkpoint: Optional[str] = None  # a Hugging Face checkpoint to serve with `transformers serve` (no role yet)
    skeleton: bool = False  # asked as the trained model answers: <think> pre-started, the CoT under the skeleton

    def describe(self) -> dict:
        role = self.role
        model = "" if role is None else role.model + (f" + adapter {Path(role.adapter).name}" if role.adapter else "")
        if role is None and self.checkpoint:
            model = f"{self.checkpoint} (transformers serve)"
        return {"variant": self.name, "label": self.label, "backend": role.backend if role else "",
                "model": model, "system_prompt": ("category's spec" if self.category_prompts else
                                                   "whole spec" if self.system_prompt else "none")
                + (", CoT skeleton" if self.skeleton else ""),
                "source": self.source, "available": self.available, "reason": self.reason}


def _stage_state(params: RunParams, stage: str) -> str:
    """Why a training stage has no model to serve, in a sentence."""
    folder = stage_dir(params, stage, create=False)
    number = stage.split("_")[0]
    if not folder.is_dir():
        return f"not available: stage {number} has not run"
    status = files.STATUS[published.section_of(stage)]
    if status.path(params).is_file():
        try:
            if files.read(params, status).get("implemented") is False:
                return f"not available: stage {number} has not produced a model (its notebook is still a frame)"
        except json.JSONDecodeError:
            pass
    return f"not available: stage {number} has not produced a model (no {SERVED_FILE} in {stage}/)"


def trained_variant(params: RunParams, name: str, label: str) -> Variant:
    """The SFT or SFT+RL model as its stage published it (`published.publish` wrote `served.json`); not available,
    with the reason, when the stage has produced no model."""
    stage = TRAINED_STAGE[name]
    served = files.SERVED[published.section_of(stage)]
    source = f"{stage}/{served.name}"
    if not served.path(params).is_file():
        return Variant(name, label, None, source, available=False, reason=_stage_state(params, stage))
    record = files.read(params, served)
    role = published.served_role(params, {"sft": "sft", "sft_rl": "rl"}[name])
    if role is not None:
        return Variant(name, label, role, source)
    if record.get("route") == "transformers_serve" and record.get("checkpoint"):
        return Variant(name, label, None, source, checkpoint=str(record["checkpoint"]))
    return Variant(name, label, None, source, available=False,
                   reason=f"not available: {source} names no servable model (route {record.get('route')!r})")


def resolve_variants(params: RunParams, spec: Spec) -> list[Variant]:
    """The variants the recipe asks for (`evaluate.variants` and `evaluate.extra_models`), each available or
    not with the reason; trained variants are found in their stage's folder, never assumed."""
    ev, policy = params.evaluate, params.models.policy
    no_grammar = skeleton_problem(policy) if any(v.endswith("_skeleton") for v in ev.variants) else None
    out = []
    for name in ev.variants:
        if name in TRAINED_STAGE:
            out.append(trained_variant(params, name, "RL only" if name == "sft_rl" and not params.rl.from_sft
                                       else LABELS[name]))
            continue
        skeleton = name.endswith("_skeleton")
        said = " + the CoT skeleton (pre-started <think>, generation's grammar)" if skeleton else ""
        if name.startswith("base"):
            variant = Variant(name, LABELS[name], policy, "models.policy" + said, skeleton=skeleton)
        else:
            by_category = ev.spec_prompt == "category"
            template = load_template("generator", params)
            variant = Variant(name, LABELS[name], policy,
                              "models.policy + " + ("the prompt's category's spec" if by_category
                                                    else "whole spec") + " as system prompt" + said,
                              system_prompt=spec_system_prompt(spec, template=template),
                              category_prompts={c: spec_system_prompt(spec, c, template) for c in spec.categories}
                              if by_category else None, skeleton=skeleton)
        if skeleton and no_grammar:
            variant.available, variant.reason = False, no_grammar
        out.append(variant)
    for name, role in ev.extra_models.items():
        out.append(Variant(name, name, role, f"evaluate.extra_models.{name}"))
    return out


def skeleton_problem(policy: ModelRole) -> Optional[str]:
    """Why the policy's server cannot write the CoT skeleton (it decodes no grammar: the backend, or an
    openai_compatible server that is neither llama.cpp's nor vLLM's, as its role or one probe says); None if it can."""
    provider = provider_for(policy)
    if provider.grammar and provider.grammar_dialect() is not None:
        return None
    return f"not available: the CoT skeleton needs a grammar, and models.policy takes none ({provider.no_grammar()})"


def variants_table(variants: Sequence[Variant]) -> pd.DataFrame:
    return pd.DataFrame([v.describe() for v in variants])


def comparison_pairs(names: Sequence[str], baseline: str, references: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The paired differences reported: every variant against the baseline; each trained variant against every
    untrained one and every chance reference in `references` (the primary family takes the strongest of them,
    metrics.strongest_baselines); SFT+RL against SFT (what RL adds)."""
    pairs = [(n, baseline) for n in names if n != baseline and baseline in names]
    untrained = [n for n in names if n not in TRAINED_STAGE] + list(references)
    pairs += [(t, u) for t in names if t in TRAINED_STAGE for u in untrained if (t, u) not in pairs and u != t]
    if "sft_rl" in names and "sft" in names and baseline != "sft":
        pairs.append(("sft_rl", "sft"))
    return pairs
