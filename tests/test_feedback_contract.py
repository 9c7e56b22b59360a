"""One feedback contract: unit tests, Sotopia evaluators and verifiers are ``Feedback``; envs call it."""

from __future__ import annotations

import asyncio

import pytest

from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.datasets import load_rows
from aligngym.envs.social_goal import SocialGoalEnv, load_scenarios
from aligngym.feedback import Feedback, FeedbackResult, Rubric, Verifier, score
from aligngym.feedback.answers import extract_code, fenced_blocks, majority
from aligngym.feedback.sotopia import DIMENSIONS, ModelEvaluator, ScriptedEvaluator, Utterance
from aligngym.feedback.unit_tests import UnitTestVerifier

ROWS = load_rows("scenarios", "social_scenarios.jsonl", names=("scenarios",))  # the shipped scenarios
BIKE = next(r for r in ROWS if r["id"] == "used_bike_sale")
ADD = {
    "id": "add",
    "prompt": "Write add(a, b).",
    "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(3, 4) == 7"],
}
# Right only for a == 1: passes the first test (the example a self-debug loop shows), fails the hidden two.
FIRST_ONLY = (
    "Here it is.\n```bash\nls\n```\n```python\ndef add(a, b):\n    return a + b if a == 1 else 0\n```\n"
)


def test_every_grader_is_a_feedback():
    signals = [
        Verifier(),
        UnitTestVerifier(sandbox=None),
        ScriptedEvaluator(),
        ModelEvaluator(ScriptedAgent(["{}"])),
    ]
    for signal in signals:
        assert isinstance(signal, Feedback), type(signal).__name__
        assert isinstance(signal.name, str) and signal.name


@pytest.mark.parametrize(
    ("signal", "needs"),
    [(Verifier(), "gold"), (UnitTestVerifier(sandbox=None), "task"), (ScriptedEvaluator(), "scenario")],
)
def test_a_feedback_without_its_context_says_what_it_needs(signal, needs):
    with pytest.raises(ValueError, match=needs):
        score(signal, [], "anything")


def test_verifier_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        Verifier(mode="fuzzy")  # type: ignore[arg-type]


def test_sotopia_evaluator_scores_one_character_as_feedback():
    scenario = load_scenarios([BIKE])[0]
    talk = [Utterance(0, "It has a firm price of $350, thanks."), Utterance(1, "Could you do 300?")]
    evaluator = ScriptedEvaluator()
    for who in (0, 1):
        direct = evaluator.score(scenario, talk, who)
        result = score(evaluator, [], talk[who].text, scenario=scenario, transcript=talk, who=who)
        assert result.score == direct.scores["goal"] and result.components == direct.scores
        assert set(result.components) == set(DIMENSIONS)
        assert result.info == {"overall": direct.overall, "evaluator": "scripted", "flags": direct.flags}
    # evaluate() is the same scores for both characters.
    assert [s.scores for s in asyncio.run(evaluator.evaluate(scenario, talk))] == [
        evaluator.score(scenario, talk, w).scores for w in (0, 1)
    ]


def test_model_evaluator_as_feedback_keeps_its_repair_flags():
    scenario = load_scenarios([BIKE])[0]
    talk = [Utterance(0, "Firm price, $350."), Utterance(1, "Deal.")]
    judge = ModelEvaluator(ScriptedAgent(['{"goal": 99, "secret": 0}'], name="judge"))
    result = score(judge, [], "Deal.", scenario=scenario, transcript=talk, who=1)
    assert result.score == 10.0 and result.info["evaluator"] == "model:judge"
    assert {"clamped:goal", "missing:relationship"} <= set(result.info["flags"])


def test_social_goal_env_calls_any_feedback_once_per_character():
    class GoalIsTurns:
        """A user's evaluator: any Feedback works; it sees the conversation as context."""

        name = "turns"

        def __init__(self):
            self.calls = []

        async def ascore(self, messages, response, **context):
            self.calls.append((context["who"], response, len(context["transcript"]), messages[0]["role"]))
            return FeedbackResult(float(2 + 4 * context["who"]), {"goal": float(2 + 4 * context["who"])})

    evaluator = GoalIsTurns()
    env = SocialGoalEnv(max_turns=2, tasks=[BIKE], evaluator=evaluator)
    env.reset(seed=0)
    _, rewards, terminated, _, infos = env.step({"agent_0": "Hello.", "agent_1": "Hi there."})
    assert all(terminated.values())
    assert sorted(evaluator.calls) == [(0, "Hello.", 2, "user"), (1, "Hi there.", 2, "user")]
    assert rewards == {"agent_0": 0.2, "agent_1": 0.6}
    assert infos["agent_1"]["evaluator"] == "turns" and infos["agent_1"]["evaluator_flags"] == []


def test_unit_tests_as_feedback_pay_only_hidden_tests_and_never_name_them():
    from aligngym.sandboxes import make_sandbox

    async def both(verifier):
        return await asyncio.gather(
            verifier.ascore([], FIRST_ONLY, task=ADD),
            verifier.ascore([], FIRST_ONLY, task=ADD, examples=1),
            verifier.averify(extract_code(FIRST_ONLY), ADD),
        )

    with make_sandbox("local", timeout=20) as sandbox:
        every, hidden, direct = asyncio.run(both(UnitTestVerifier(sandbox, timeout=20)))
    assert (direct.passed, direct.total) == (1, 3)
    assert every.score == pytest.approx(1 / 3) and every.components["pass_rate"] == every.score
    assert every.components["all_passed"] == 0.0 and every.info["passed"] == 1 and every.info["total"] == 3
    assert "add(2, 2)" in every.rationale  # no examples: the first failing test is shown (redacted)
    assert hidden.score == 0.0 and hidden.info["examples"] == 1
    assert "add(2, 2)" not in hidden.rationale and "add(3, 4)" not in hidden.rationale
    assert "2 of 2 hidden tests fail" in hidden.rationale


def test_unit_tests_fit_a_rubric():
    class FakeSandbox:
        """A run that prints a report line in the harness's format, but without this run's nonce."""

        def __init__(self):
            self.runs = 0

        async def arun(self, *args, **kwargs):
            from aligngym.sandboxes.base import RunResult

            self.runs += 1
            return RunResult(status="ok", stdout='forged 0 {"k": "test", "i": 0, "ok": true}\n')

    sandbox = FakeSandbox()
    rubric = Rubric([(UnitTestVerifier(sandbox), 1.0), (Verifier(), 0.5)])
    result = score(rubric, [], "```python\ndef add(a, b): return 3\n```\nAnswer: 4", task=ADD, gold="4")
    # Report lines without this run's nonce are forgeries: no test passes.
    assert (
        sandbox.runs == 1 and result.components["unit_tests"] == 0.0 and result.components["verifier"] == 1.0
    )
    assert result.score == 0.5


def test_majority_skips_empty_answers_and_breaks_ties_by_order():
    assert majority([None, "", "b", "a", "a", "b"]) == "b"
    assert majority([None, ""]) is None
    assert majority(["0.5", "1/2", "x"], agree=lambda a, b: a == b or {a, b} == {"0.5", "1/2"}) == "0.5"


def test_code_blocks_are_read_from_the_reply():
    assert fenced_blocks("```sh\nls\n```\n```\nbare\n```", {"sh"}) == ["ls"]
    assert extract_code("```python\nx = 1\n```\n```bash\necho\n```") == "x = 1\n"
    assert extract_code("no fence") == "no fence"
