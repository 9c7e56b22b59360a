"""Feedback signals: verifiers in every mode, rubrics keeping their components."""

from __future__ import annotations

import pytest

from aligngym.feedback.base import FeedbackResult, Rubric, score
from aligngym.feedback.verifier import Verifier, extract_answer, math_equal

Q = [{"role": "user", "content": "What is half of one?"}]


def test_extract_answer_prefers_boxed_then_answer_line():
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("work...\nAnswer: 42.") == "42"
    assert extract_answer("first\nlast line") == "last line"
    assert extract_answer("") == ""


@pytest.mark.parametrize(
    ("mode", "response", "gold", "expected"),
    [
        ("exact", "Answer: Paris", "Paris", True),
        ("exact", "Answer: paris", "Paris", False),
        ("normalized", "Answer: the Paris!", "paris", True),
        ("numeric", "Answer: 1,000.0", "1000", True),
        ("numeric", "Answer: 999", "1000", False),
        ("numeric", "no number here", "1", False),
        ("math", "\\boxed{\\frac{1}{2}}", "0.5", True),
        ("math", "Answer: 2*x + x", "3*x", True),
        ("math", "Answer: 1/3", "0.5", False),
        ("math", "Answer: )(garbage", "1", False),
    ],
)
def test_verifier_modes(mode, response, gold, expected):
    result = score(Verifier(mode=mode), Q, response, gold=gold)
    assert result.score == float(expected) and result.components == {"correct": float(expected)}


def test_verifier_needs_gold():
    with pytest.raises(ValueError, match="gold"):
        score(Verifier(), Q, "1")


def test_math_equal_is_symmetric_and_safe():
    assert math_equal("x**2 - 1", "(x-1)*(x+1)") and math_equal("(x-1)*(x+1)", "x^2 - 1")
    # sympy's parser evals its input: anything beyond plain arithmetic must be refused, not run.
    for hostile in [
        "__import__('os').system('true')",
        "exit()",
        "open(chr(47))",
        "9**9**9**9",
        "2**(10**10)",
    ]:
        assert not math_equal(hostile, "1")


class _Const:
    def __init__(self, name, value):
        self.name, self.value = name, value

    async def ascore(self, messages, response, **context):
        return FeedbackResult(self.value, {"part": self.value}, rationale=f"{self.name} says {self.value}")


def test_rubric_weights_and_keeps_components():
    rubric = Rubric([(Verifier(mode="numeric"), 2.0), (_Const("style", 0.5), 0.2)])
    result = score(rubric, Q, "Answer: 0.5", gold="0.5")
    assert result.score == pytest.approx(2.0 + 0.1)
    assert result.components == {"verifier": 1.0, "verifier/correct": 1.0, "style": 0.5, "style/part": 0.5}
    assert "style says 0.5" in result.rationale


@pytest.mark.parametrize(
    ("response", "gold"), [("Answer: -5", "5"), ("Answer: 16", "1/6"), ("Answer: 1.5", "15")]
)
def test_signs_points_and_slashes_are_not_normalised_away(response, gold):
    for mode in ("normalized", "math", "numeric"):
        assert score(Verifier(mode=mode), Q, response, gold=gold).score == 0.0, mode


def test_peer_rating_is_a_feedback_over_rater_agents():
    from aligngym.agents import ScriptedAgent
    from aligngym.feedback import PeerRating

    raters = (ScriptedAgent(["answer: 7 - kind and honest"]), ScriptedAgent(["answer: 4/7 - vague"]))
    result = score(PeerRating(raters=raters), Q, "Half of one is 0.5.")
    assert result.score == pytest.approx((5.5 - 1) / 6)
    assert result.components == {"mean_rating": 5.5, "rater_0": 7.0, "rater_1": 4.0}
    assert "kind and honest" in result.rationale
    garbage = score(PeerRating(raters=(ScriptedAgent(["no idea"]),)), Q, "x")
    assert garbage.score == 0.0 and garbage.info["unrated"]
    with pytest.raises(ValueError, match="raters"):
        score(PeerRating(), Q, "x")
