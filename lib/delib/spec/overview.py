"""Stage 01 (policy): load the spec and prompt sets a recipe names, describe them, and hand them to later stages.

Later stages read `01_policy/spec.json`, `01_policy/prompts.jsonl` and `01_policy/spec_for_category.json`,
never the source files, so that a run is self-contained.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from delib.models import ModelClient
from delib.spec.prompt_labels import agreement, choices, label_prompts
from delib.spec.prompts import SPLIT_ALIASES, load_prompt_sets, near_duplicates
from delib.spec.document import Spec, count_tokens, load_spec, spec_for_category
from delib.run import stages
from delib.run.config import RunParams
from delib.run import files
from delib.run.paths import resolve

STAGE = stages.POLICY


def load_inputs(params: RunParams) -> tuple[Spec, pd.DataFrame]:
    """The spec (with its mapping) and every prompt set named in params, checked against each other; prompts
    without a category, or an action and a level, labelled by models.judge (`prompts.label_missing`)."""
    spec = load_spec(resolve(params.spec.path), resolve(params.spec.mapping) if params.spec.mapping else None)
    if not spec.categories:
        raise ValueError(f"{spec.source}: the spec has no category mapping (front matter or spec.mapping); "
                         "every prompt needs a category of the spec")

    def labeller(df: pd.DataFrame) -> pd.DataFrame:
        with ModelClient.for_run(params, params.models.judge, "labeller", STAGE) as client:
            return label_prompts(df, spec, client)[0]

    prompts = load_prompt_sets(params.prompts.sets, spec, resolve, seed=params.seed,
                               dev_share=params.prompts.dev_share,
                               labeller=labeller if params.prompts.label_missing else None)
    return spec, prompts


def labelling_summary(spec: Spec, prompts: pd.DataFrame) -> Optional[dict]:
    """What the labeller filled and its agreement with the prompt sets' own labels; None when no prompt needed it."""
    if "predicted_label" not in prompts:
        return None
    filled = {col: int((prompts[src] == "model").sum()) for col, src in (("category", "category_source"),
                                                                          ("expected_action", "action_source"))}
    confidence = prompts.loc[(prompts["category_source"] == "model") | (prompts["action_source"] == "model"),
                             "label_confidence"].dropna()
    return {"filled": filled, "confidence_of_filled": {"median": round(float(confidence.median()), 3),
                                                        "min": round(float(confidence.min()), 3)}
            if not confidence.empty else None, **agreement(prompts, choices(spec))}


def section_tree(spec: Spec) -> str:
    """The section tree, one line per section: indented title, [id], words of its own body, owning category."""
    owner = spec.section_category()
    lines = []
    for s in spec.sections.values():
        label = f"{'    ' * (s.level - 1)}{s.title} [{s.id}]"
        lines.append(f"{label:<78} {len(s.body.split()):>4} words  {owner.get(s.id, '')}")
    return "\n".join(lines)


def category_table(spec: Spec, rendered: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"category": c.id, "title": c.title, "sections": ", ".join(c.sections),
                          "levels": ", ".join(f"{lv['name']}:{lv['action']}" for lv in c.levels),
                          "spec_for_category tokens": rendered[c.id]["tokens"]}
                         for c in spec.categories.values()])


def render_all(spec: Spec) -> dict[str, dict]:
    """`spec_for_category` for every category, with its length in the embedded model's tokens."""
    out = {}
    for cid in spec.categories:
        text = spec_for_category(spec, cid)
        out[cid] = {"text": text, "tokens": count_tokens(text), "checks": spec.categories[cid].checks}
    return out


def prompt_counts(prompts: pd.DataFrame) -> pd.DataFrame:
    return pd.crosstab(prompts["category"], [prompts["split"], prompts["expected_action"]], margins=True)


def split_leaks(prompts: pd.DataFrame) -> pd.DataFrame:
    """Held-out prompts (dev or test) that are the same as, or near-copies of, a train prompt."""
    return near_duplicates(prompts[prompts.split == "train"], prompts[prompts.split != "train"])


def read_outputs(params: RunParams) -> tuple[Spec, pd.DataFrame, dict[str, dict]]:
    """What stage 01 handed on: the parsed spec, the prompt table and the rendered spec per category."""
    prompts = files.read(params, files.PROMPTS)
    prompts["split"] = prompts["split"].replace(SPLIT_ALIASES)  # a run of before the held-out split was dev
    return (Spec.from_dict(files.read(params, files.SPEC)), prompts,
            files.read(params, files.SPEC_FOR_CATEGORY))
