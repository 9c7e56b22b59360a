"""Model-based feedback: the judge's parser and scripted rule, the critic, self-consistency, the reward model."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from aligngym.agents import ScriptedAgent
from aligngym.feedback.base import score
from aligngym.feedback.critic import Critic, scripted_critique
from aligngym.feedback.judge import Judge, default_constitution, load_principles, parse_score
from aligngym.feedback.self_consistency import SelfConsistency
from aligngym.feedback.verifier import answers_agree

CHAT = [{"role": "user", "content": "Give three tips for getting better sleep."}]
HELPFUL = (
    "Keep a regular sleep schedule, even at weekends. Avoid screens and caffeine in the evening. "
    "Keep your bedroom dark, quiet and cool, and get some daylight in the morning to help your sleep."
)


# -- judge ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7", 7),
        ("The answer is decent.\nScore: 7", 7),
        ("**Score:** 8", 8),
        ("score = 3.5", 3.5),
        ("I'd say a final score of 6 is fair.", 6),
        ("7/10", 7),
        ("This deserves 9 out of 10.", 9),
        ("**8**", 8),
        ('{"score": 8, "reason": "good"}', 8),
        ('Here you go: {"Score": "4"}', 4),
        ("8", 8),
        ("I would give this an 8.", 8),
        ("Score: 2 at first, but on reflection Score: 5", 5),
        ("Steps 1, 2 and 3 are right. Score: 10/10", 10),
        ("score: 7.5/10", 7.5),
        ("Score: 7.", 7),
        ('{"score": "high"} so, Score: 6 of 2 parts', 6),
    ],
)
def test_parse_score_formats(text, expected):
    assert parse_score(text, (1, 10)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "blah",
        "",
        "score: 99",
        "NaN",
        "Score: -3",
        "Score: 0",
        "1 and 2 and 3",
        "{not json",
        "Score: nan",
        '{"score": true}',
    ],
)
def test_parse_score_rejects_garbage(text):
    assert parse_score(text, (1, 10)) is None


def test_strict_parsing_ignores_quoted_numbers():
    assert parse_score("The final answer '5' is wrong.", (1, 10), lenient=False) is None
    assert parse_score("The final answer '5' is wrong.", (1, 10), lenient=True) == 5


@pytest.mark.parametrize("reply", ["blah", "", "score: 99", "NaN", "Score: nine"])
def test_judge_fed_garbage_gives_a_defined_result(reply):
    judge = Judge(ScriptedAgent([reply]))
    result = score(judge, CHAT, HELPFUL)
    assert result.score == 0.0
    assert result.info["parse_error"] is True
    assert result.rationale == reply


def test_judge_normalises_to_unit_interval():
    result = score(Judge(ScriptedAgent(["Good.\nScore: 10"])), CHAT, HELPFUL)
    assert result.score == 1.0 and result.components == {"judge_raw": 10.0}
    assert result.info["parse_error"] is False
    assert score(Judge(ScriptedAgent(["Score: 1"])), CHAT, HELPFUL).score == 0.0
    assert score(Judge(ScriptedAgent(["Score: 3"]), scale=(1, 5)), CHAT, HELPFUL).score == 0.5


def test_judge_prompt_carries_principles_from_a_file(tmp_path):
    path = tmp_path / "principles.txt"
    path.write_text("# my constitution\nBe kind to ducks.\n\nNever mention the moon.\n")
    seen = []
    judge = Judge(ScriptedAgent(lambda messages: seen.append(messages) or "Score: 5"), principles=path)
    assert judge.principles == ["Be kind to ducks.", "Never mention the moon."]
    assert score(judge, CHAT, HELPFUL).score == pytest.approx(4 / 9)
    prompt = seen[0][-1]["content"]
    assert "1. Be kind to ducks." in prompt and "2. Never mention the moon." in prompt
    assert HELPFUL in prompt and "Score: N" in prompt


def test_principles_sources():
    assert len(default_constitution()) >= 8
    assert any(p.startswith("Harmless") for p in default_constitution())
    assert load_principles(["a", " ", "b"]) == ["a", "b"]
    assert load_principles("one\ntwo") == ["one", "two"]
    with pytest.raises(ValueError, match="not found"):
        load_principles("/no/such/constitution.txt")
    assert Judge().principles == default_constitution()
    assert Judge(rubric="Is it short?").principles == []


def test_scripted_judge_prefers_helpful_answers():
    judge = Judge()
    helpful = score(judge, CHAT, HELPFUL)
    refusal = score(judge, CHAT, "I'm sorry, but I can't help with that.")
    empty = score(judge, CHAT, "")
    off_topic = score(judge, CHAT, "Bananas are yellow.")
    rude = score(judge, CHAT, HELPFUL + " Only an idiot would need to ask.")
    assert helpful.score > off_topic.score > refusal.score > empty.score
    assert helpful.score > rude.score
    assert helpful.info["parse_error"] is False and "Score:" in helpful.rationale
    assert score(judge, CHAT, HELPFUL).score == helpful.score  # deterministic


# -- critic ---------------------------------------------------------------------------------------------
def test_scripted_critic_names_the_wrong_answer():
    messages = [{"role": "user", "content": "What is 2+3?"}]
    result = score(Critic(), messages, "2 + 3 = 6.\nAnswer: 6", gold="5")
    assert "'6'" in result.rationale and "incorrect" in result.rationale
    assert "5" not in result.rationale  # the gold is not given away
    assert result.score == 0.0
    right = score(Critic(), messages, "Answer: 5", gold="5").rationale
    assert "correct" in right and "incorrect" not in right
    assert "is correct" in scripted_critique("Answer: 0.5", gold="1/2")


def test_scripted_critic_generic_checks():
    assert "empty" in scripted_critique("")
    assert "too short" in scripted_critique("Paris")
    assert "final answer" in scripted_critique("The capital of France is the city of Paris, on the Seine.")
    assert (
        scripted_critique("I added both numbers and checked the sum twice.\nAnswer: 5")
        == "No problems found."
    )


def test_model_critic_score_only_when_stated():
    plain = score(Critic(ScriptedAgent(["The answer 7 is off by one."])), CHAT, "7")
    assert plain.score == 0.0 and plain.rationale == "The answer 7 is off by one."
    scored = score(Critic(ScriptedAgent(["Mostly right.\nScore: 10"])), CHAT, "7")
    assert scored.score == 1.0 and scored.components["critic_raw"] == 10


# -- self-consistency ----------------------------------------------------------------------------------
def test_self_consistency_counts_agreeing_samples():
    replies = itertools.cycle(["Answer: 4", "Answer: 4", "Answer: 5", "Answer: 4", "Answer: 4"])
    agent = ScriptedAgent(lambda messages: next(replies))
    result = score(SelfConsistency(agent, n=5), [{"role": "user", "content": "2+2?"}], "It is 4.\nAnswer: 4")
    assert result.score == pytest.approx(0.8)
    assert result.components == {"agreement": pytest.approx(0.8), "majority": 1.0}
    assert result.info["answers"] == ["4", "4", "5", "4", "4"]
    assert agent.calls == 5
    minority = score(SelfConsistency(agent, n=5), [{"role": "user", "content": "2+2?"}], "Answer: 5")
    assert minority.score == pytest.approx(0.2) and minority.components["majority"] == 0.0


def test_answers_agree_is_maths_aware_and_sign_safe():
    assert answers_agree("0.5", "1/2") and answers_agree("x = 3", "3") and answers_agree("Paris", "paris.")
    assert not answers_agree("-5", "5")
    assert not answers_agree("16", "1/6")
    assert not answers_agree("", "")


# -- reward model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_rm():
    from aligngym.feedback.reward_model import RewardModel

    return RewardModel("tiny", batch_size=4)


def _pairs(n):
    return [([{"role": "user", "content": f"Question {i}?"}], "word " * (i + 1)) for i in range(n)]


def test_reward_model_scores_batches_deterministically(tiny_rm):
    pairs = _pairs(6)
    first = tiny_rm.score_batch(pairs)
    assert len(first) == 6 and all(math.isfinite(x) for x in first)
    assert tiny_rm.score_batch(pairs) == first
    assert len(set(first)) > 1  # different inputs, different scores
    # a score does not depend on its batch-mates (right padding)
    alone = [tiny_rm.score_batch([p])[0] for p in pairs]
    assert alone == pytest.approx(first, abs=1e-5)
    result = score(tiny_rm, *pairs[2])
    assert result.score == pytest.approx(first[2], abs=1e-5) and result.components["raw"] == result.score


def test_concurrent_ascore_calls_are_batched(tiny_rm):
    pairs = _pairs(10)

    async def main():
        before = tiny_rm.forward_calls
        results = await asyncio.gather(*(tiny_rm.ascore(m, r) for m, r in pairs))
        return results, tiny_rm.forward_calls - before

    results, calls = asyncio.run(main())
    assert calls == 3  # 10 requests, batch_size 4
    assert [r.score for r in results] == pytest.approx(tiny_rm.score_batch(pairs), abs=1e-5)
    batched = asyncio.run(tiny_rm.ascore_batch(pairs))
    assert batched == pytest.approx([r.score for r in results], abs=1e-5)


def test_reward_model_bad_paths_raise_value_error(tmp_path):
    from aligngym.agents.tiny import tiny_model_path
    from aligngym.feedback.reward_model import RewardModel

    with pytest.raises(ValueError, match="cannot load reward model"):
        RewardModel(str(tmp_path / "missing" / "model"))
    with pytest.raises(ValueError, match="cannot load reward model"):
        RewardModel(str(tmp_path))
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModel(str(tiny_model_path()))  # the tiny policy is a causal LM, not a one-logit reward model
