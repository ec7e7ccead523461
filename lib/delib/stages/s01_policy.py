"""Stage 01, policy: the spec and the prompt sets a recipe names, parsed, checked against each other, labelled where
a prompt lacks a category or action, and handed to the later stages as files of the run.

Steps: `load` (spec and prompts), `render` (spec_for_category for every category), `hand_off` (the files).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from delib.spec import overview
from delib.spec.document import Spec
from delib.run import files
from delib.run import stages as st
from delib.run.config import RunParams

STAGE = st.POLICY


def load(params: RunParams) -> tuple[Spec, pd.DataFrame]:
    """The spec and every prompt set; prompts without a category or action labelled by models.judge."""
    return overview.load_inputs(params)


def render(spec: Spec) -> dict[str, dict]:
    """What the generator sees for each category (spec_for_category), with its length in tokens."""
    return overview.render_all(spec)


def hand_off(params: RunParams, spec: Spec, prompts: pd.DataFrame, rendered: dict[str, dict]) -> list[Path]:
    """Write what the later stages read (they never read the source files, so a run is self-contained)."""
    return [files.write(params, files.SPEC, spec.to_dict()),
            files.write(params, files.SPEC_FOR_CATEGORY, rendered),
            files.write(params, files.PROMPTS, prompts)]


def run(params: RunParams) -> dict:
    """The whole stage: load, render, hand off."""
    spec, prompts = load(params)
    rendered = render(spec)
    written = hand_off(params, spec, prompts, rendered)
    return {"sections": len(spec.sections), "categories": len(spec.categories), "prompts": len(prompts),
            **{f"{split}_prompts": int((prompts["split"] == split).sum()) for split in ("dev", "test")},
            "files": [p.name for p in written]}


if __name__ == "__main__":
    from delib.stages.__main__ import main
    raise SystemExit(main([STAGE, *sys.argv[1:]]))
