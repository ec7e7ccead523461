"""Stage 03: the spec-aware judge, the rule-based graders, filtering into the training sets."""
