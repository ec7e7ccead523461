"""Stage 02: chains of thought and answers written over the spec."""

from delib.policy.overview import read_outputs as read_policy  # what stage 01 handed on

__all__ = ["read_policy"]
