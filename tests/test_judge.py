"""The judge: its messages, min-of-k, consistency, and the expected score from log-probabilities."""
import math

import pytest
from pydantic import ValidationError

from delib.judge import AnswerVerdict, JudgeVerdict, aggregate, consistency, expected_score, judge_messages
from delib.models import TokenLogprob


def test_messages_show_or_hide_the_cot():
    full = judge_messages("Q?", "A.", "[s1] text", cot="I cite [s1].", expected_action="refuse")
    assert "<spec>\n[s1] text\n</spec>" in full[0]["content"] and "cot_quality" in full[0]["content"]
    assert "I cite [s1]." in full[1]["content"] and "action for this request is refuse" in full[1]["content"]
    hidden = judge_messages("Q?", "A.", "[s1] text", cot=None)
    assert "cot_quality" not in hidden[0]["content"] and "reasoning" not in hidden[1]["content"]


def test_verdicts_are_bounded():
    with pytest.raises(ValidationError):
        JudgeVerdict(action_correct=11, helpfulness=0, style=0, cot_quality=0, overall=0)
    assert "cot_quality" not in AnswerVerdict.model_fields


def test_min_of_k_and_mean():
    vs = [{"overall": 8, "style": 5, "rationale": "a"}, {"overall": 6, "style": 9, "rationale": "b"}, None]
    assert aggregate(vs) == {"overall": 6, "style": 5}
    assert aggregate(vs, "mean") == {"overall": 7, "style": 7}
    assert aggregate([None]) is None
    assert consistency(vs) == {"spread": 2, "all_equal": False}


def test_expected_score_from_logprobs():
    toks = [TokenLogprob(t, -0.1) for t in ['{"', 'overall', '":', ' ']]
    toks.append(TokenLogprob("8", math.log(0.6), top=[("8", math.log(0.6)), ("6", math.log(0.2)), ("x", math.log(0.2))]))
    assert expected_score(toks) == pytest.approx((8 * 0.6 + 6 * 0.2) / 0.8)
    assert expected_score(toks, "style") is None
    assert expected_score(None) is None
