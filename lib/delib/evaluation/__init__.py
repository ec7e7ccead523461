"""Stages 06-07: the variants answer held-out prompts, the answers are graded, metrics, report."""

from delib.policy.overview import read_outputs as read_policy  # what stage 01 handed on

__all__ = ["read_policy"]
