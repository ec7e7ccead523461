"""Stages 06-07: the variants answer held-out prompts, the answers are graded, metrics, report."""
