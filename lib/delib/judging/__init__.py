"""Stage 03: the spec-aware judge, the rule-based graders, filtering into the training sets."""

from delib.generation.generate import show_samples  # kept samples are shown as stage 02 shows its samples

__all__ = ["show_samples"]
