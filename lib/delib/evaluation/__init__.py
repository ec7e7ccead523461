"""Stages 06-07: the variants answer held-out prompts, the answers are graded, metrics, report."""

from delib.policy import overview


def read_policy(params):
    """What stage 01 handed on (spec, prompts, spec_for_category), the spec's style checks checked against the
    propositions the graders know (an unknown one: an error with the spec's file and line)."""
    from delib.judging.graders import check_spec_checks

    spec, prompts, rendered = overview.read_outputs(params)
    check_spec_checks(spec)
    return spec, prompts, rendered


__all__ = ["read_policy"]
