"""The one registry of what each stage is: its params section, the sections of other stages it reads, the model
roles it calls, the files it reads and writes, and its module in `delib.stages` (imported on first use, by name:
nothing here imports a stage, and training pulls in torch). The runner, `--stages`, the `--resume` fingerprint and
the preflight read it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from delib.run import files as f
from delib.run import stages as st

PACKAGE = "delib.stages"  # where the stages' modules live

if TYPE_CHECKING:
    from delib.run.config import RunParams


@dataclass(frozen=True)
class Stage:
    name: str                                       # "02_generate": its notebook and its folder in a run
    module: str                                     # its module in this package, "s02_generate"
    section: str | None                             # the params section it owns (01 owns none)
    reads: tuple[str, ...]                          # sections of other stages it reads too
    roles: Callable[["RunParams"], tuple[str, ...]] # the `models.*` roles it calls under these params
    inputs: tuple[f.RunFile, ...]                   # the files of earlier stages it reads
    outputs: tuple[f.RunFile, ...]                  # the files it writes (the main ones; figures aside)

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def short(self) -> str:
        return self.name.split("_", 1)[1]


def _labeller(p: "RunParams") -> tuple[str, ...]:
    return ("judge",) if p.prompts.label_missing else ()  # prompts without a category or action are labelled


def _evaluators(p: "RunParams") -> tuple[str, ...]:
    return ("policy", "grader")  # the grader also grades StrongREJECT's rubric, when there is one


def _trained(which: str) -> tuple[f.RunFile, ...]:
    """What a training stage writes in its folder besides its own files (the checkpoint aside)."""
    return tuple(both[which] for both in (f.TRAINING_LOG, f.TRAINING_SUMMARY, f.SERVED, f.OPENAI_JOB, f.STATUS))


_POLICY_FILES = (f.SPEC, f.SPEC_FOR_CATEGORY, f.PROMPTS)
REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage(st.POLICY, "s01_policy", None, (), _labeller, (), _POLICY_FILES),
    Stage(st.GENERATE, "s02_generate", "generate", (), lambda p: ("generator",), _POLICY_FILES, (f.SAMPLES,)),
    Stage(st.JUDGE, "s03_judge", "judge", (), lambda p: ("judge", "second_judge"), (*_POLICY_FILES, f.SAMPLES),
          (f.JUDGEMENTS, f.SCORED, f.FUNNEL, f.SFT_SET, f.SFT_OPENAI, f.RL_SET)),
    Stage(st.SFT, "s04_sft", "sft", (), lambda p: ("policy",),
          (*_POLICY_FILES, f.FUNNEL, f.SFT_SET, f.SFT_OPENAI),
          _trained("sft")),
    Stage(st.RL, "s05_rl", "rl", ("judge", "sft"), lambda p: ("judge", "policy"),
          (*_POLICY_FILES, f.RL_SET, f.SERVED["sft"]), (*_trained("rl"), f.REWARDS, f.RFT_SET)),
    Stage(st.EVALUATE, "s06_evaluate", "evaluate", ("judge", "sft", "rl"), _evaluators,
          (*_POLICY_FILES, f.SAMPLES),
          (f.VARIANTS, f.ANSWERS, f.CITATIONS, f.METRICS, f.DIFFERENCES, f.DEFINITIONS, f.EVALUATION, f.VALIDITY)),
    Stage(st.ANALYSIS, "s07_analysis", "analysis", ("judge", "evaluate"), lambda p: (),
          (f.SPEC, f.FUNNEL, f.SCORED, f.METRICS, f.DIFFERENCES, f.DEFINITIONS, f.VARIANTS, f.EVALUATION, f.VALIDITY,
           f.ANSWERS), (f.METRICS_DOC, f.REPORT)),
)}
assert tuple(REGISTRY) == st.STAGES, "the registry lists every stage, in pipeline order"


def get(name: str) -> Stage:
    """A stage by its full name ("02_generate"), its short name ("generate") or its number ("02", "2")."""
    for stage in REGISTRY.values():
        if name in (stage.name, stage.short, stage.number, stage.number.lstrip("0"), stage.module):
            return stage
    raise KeyError(f"unknown stage {name!r}; stages are {', '.join(REGISTRY)}")


def module(stage: str | Stage) -> ModuleType:
    """The stage's module (imported on first use)."""
    s = stage if isinstance(stage, Stage) else get(stage)
    return importlib.import_module(f"{PACKAGE}.{s.module}")
