"""Stage 03: the spec-aware judge, the rule-based graders, filtering into the training sets."""

from delib.generation.generate import show_samples  # kept samples are shown as stage 02 shows its samples
from delib.policy.overview import read_outputs as read_policy  # what stage 01 handed on

__all__ = ["read_policy", "show_samples"]
