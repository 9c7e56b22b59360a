"""Model feedback as environments: RewardModel-v0, Judge-v0, Verifier-v0 and CritiqueRefine-v0 end to end."""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import pytest

import aligngym
from aligngym.agents import ScriptedAgent
from aligngym.envs.model_feedback import (
    CritiqueRefineEnv,
    JudgeEnv,
    RewardModelEnv,
    VerifierEnv,
    load_tasks,
    math_tasks,
)
from aligngym.feedback.base import FeedbackResult

IDS = ["aligngym/RewardModel-v0", "aligngym/Judge-v0", "aligngym/Verifier-v0", "aligngym/CritiqueRefine-v0"]
FRACTIONS = [{"id": "half", "prompt": "What is 1/4 + 1/4?", "answer": "1/2"}]


def test_all_four_are_registered_single_agent():
    for env_id in IDS:
        entry = aligngym.registered()[env_id]
        assert not entry.multi_agent and entry.description


def test_shipped_prompts_are_many_and_varied():
    tasks = load_tasks(None)
    assert len(tasks) >= 60
    assert len({t.prompt for t in tasks}) == len(tasks) and len({t.id for t in tasks}) == len(tasks)


def test_load_tasks_forms_and_errors(tmp_path):
    assert [t.prompt for t in load_tasks(["Say hi.", {"prompt": "Say bye.", "id": "b"}])] == [
        "Say hi.",
        "Say bye.",
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "answer": 4}) + "\n\n")
    assert load_tasks(path, need_answer=True)[0].answer == "4"
    with pytest.raises(ValueError, match="prompt"):
        load_tasks([{"question": "no prompt"}])
    with pytest.raises(ValueError, match="answer"):
        load_tasks(["no answer"], need_answer=True)
    with pytest.raises(ValueError, match="unique"):
        load_tasks([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])


# -- Verifier-v0 ----------------------------------------------------------------------------------------
def test_verifier_generator_has_hundreds_of_distinct_seeded_tasks():
    tasks = math_tasks()
    assert len({t.prompt for t in tasks}) == len(tasks) >= 200
    assert math_tasks() == tasks  # seeded: the same pool every time
    families = {t.prompt.split()[0] for t in tasks}
    assert {"Compute", "Solve", "What"} <= families and len(families) > 3  # plus word problems
    env = gym.make("aligngym/Verifier-v0")
    assert len(env.unwrapped.tasks) >= 200
    seen = {env.reset(seed=s)[1]["task_id"] for s in range(50)}
    assert len(seen) > 40


def test_verifier_rewards_correct_answers_only():
    env = VerifierEnv()
    for seed in range(12):
        _, info = env.reset(seed=seed)
        gold = env.task.answer
        _, reward, terminated, _, step_info = env.step(f"Let me work it out.\nAnswer: {gold}")
        assert (reward, terminated) == (1.0, True) and step_info["reward_components"] == {"correct": 1.0}
        env.reset(seed=seed)
        wrong = str(int(gold.split("/")[0]) + 1) + ("/" + gold.split("/")[1] if "/" in gold else "")
        assert env.step(f"Answer: {wrong}")[1] == 0.0
        env.reset(seed=seed)
        if gold.lstrip("-") != "0":
            negated = gold[1:] if gold.startswith("-") else "-" + gold
            assert env.step(f"Answer: {negated}")[1] == 0.0, (gold, negated)


def test_verifier_accepts_math_equivalent_answers():
    env = VerifierEnv(tasks=FRACTIONS)
    for answer in ["1/2", "0.5", "2/4", "\\boxed{\\frac{1}{2}}", "x = 1/2"]:
        env.reset(seed=0)
        assert env.step(f"Answer: {answer}")[1] == 1.0, answer
    env.reset(seed=0)
    assert env.step("Answer: 0.25")[1] == 0.0
    env.reset(seed=0)
    assert env.step("Answer: 12")[1] == 0.0  # "1/2" without its slash is not 1/2


def test_verifier_task_id_option_and_async_step():
    env = VerifierEnv(tasks=[*FRACTIONS, {"id": "two", "prompt": "1+1?", "answer": "2"}])
    obs, info = env.reset(seed=0, options={"task_id": "two"})
    assert obs == "1+1?" and info["task_id"] == "two"
    _, reward, *_ = asyncio.run(env.astep("Answer: 2"))
    assert reward == 1.0
    with pytest.raises(ValueError, match="unknown task_id"):
        env.reset(options={"task_id": "nope"})


# -- RewardModel-v0 -------------------------------------------------------------------------------------
class FixedFeedback:
    """A stand-in reward model that gives every response the same score."""

    name = "fixed"

    async def ascore(self, messages, response, **context):
        return FeedbackResult(0.5, {"raw": 0.5})


def test_reward_model_env_with_the_tiny_model():
    env = gym.make("aligngym/RewardModel-v0")
    obs, _ = env.reset(seed=1)
    assert obs in {t.prompt for t in env.unwrapped.tasks}
    _, reward, terminated, _, info = env.step("Keep a regular schedule and avoid caffeine late in the day.")
    assert terminated and set(info["reward_components"]) == {"reward_model", "length_penalty"}
    assert (
        reward == info["reward_components"]["reward_model"]
        and info["reward_components"]["length_penalty"] == 0
    )
    env.reset(seed=1)
    assert (
        env.step("Keep a regular schedule and avoid caffeine late in the day.")[1] == reward
    )  # deterministic


def test_length_penalty_lowers_reward_for_long_answers():
    env = RewardModelEnv(reward_model=FixedFeedback(), length_penalty=0.01, max_chars=100)
    env.reset(seed=0)
    short = env.step("a" * 100)
    env.reset(seed=0)
    long = env.step("a" * 300)
    assert short[1] == 0.5 and short[4]["reward_components"]["length_penalty"] == 0.0
    assert long[1] == pytest.approx(0.5 - 2.0)
    assert long[4]["reward_components"] == {"reward_model": 0.5, "length_penalty": pytest.approx(-2.0)}
    with pytest.raises(ValueError):
        RewardModelEnv(reward_model=FixedFeedback(), length_penalty=-1)


# -- Judge-v0 -------------------------------------------------------------------------------------------
def test_judge_env_with_a_model_judge():
    judge = ScriptedAgent(["The answer is clear.\nScore: 9"])
    env = gym.make("aligngym/Judge-v0", judge=judge)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("Anything at all.")
    assert terminated and reward == pytest.approx(8 / 9)
    assert info["reward_components"] == {"judge": pytest.approx(8 / 9), "judge_raw": 9.0}
    assert info["rationale"].endswith("Score: 9") and info["feedback"]["parse_error"] is False
    assert judge.calls == 1


def test_judge_env_default_constitution_and_garbage_judge(tmp_path):
    seen = []
    env = JudgeEnv(judge=ScriptedAgent(lambda m: seen.append(m) or "no idea"), constitution=["Be brief."])
    env.reset(seed=0)
    _, reward, _, _, info = env.step("Short answer.")
    assert reward == 0.0 and info["feedback"]["parse_error"] is True
    assert "1. Be brief." in seen[0][-1]["content"]


def test_judge_env_scripted_default_prefers_helpful_answers():
    env = gym.make("aligngym/Judge-v0")
    env.reset(seed=0, options={"task_id": "fp-002"})  # three tips for better sleep
    helpful = env.step(
        "Go to bed at the same time every night. Avoid caffeine after noon. Keep the bedroom dark and cool "
        "so that your sleep is deeper, and put your phone away an hour before bed."
    )[1]
    env.reset(seed=0, options={"task_id": "fp-002"})
    refusal = env.step("I'm sorry, I can't help with that.")[1]
    assert helpful > refusal


# -- CritiqueRefine-v0 ----------------------------------------------------------------------------------
def _episode(env, draft, revision, seed=0):
    env.reset(seed=seed)
    gold = env.unwrapped.task.answer
    first = env.step(draft.format(gold=gold, wrong=f"{gold}1"))
    second = env.step(revision.format(gold=gold, wrong=f"{gold}1"))
    return first, second


def test_critique_refine_rewards_the_improvement():
    env = gym.make("aligngym/CritiqueRefine-v0")
    first, second = _episode(env, "Answer: {wrong}", "Answer: {gold}")
    obs, reward, terminated, truncated, info = first
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["reward_components"] == {"draft_score": 0.0}
    assert obs.startswith(info["critique"]) and "incorrect" in obs and "Revise" in obs
    assert info["messages"][-1] == {"role": "user", "content": obs}  # the critique is the second observation
    _, reward, terminated, _, info = second
    assert (reward, terminated) == (1.0, True)
    assert info["reward_components"] == {"draft_score": 0.0, "revision_score": 1.0, "improvement": 1.0}

    _, second = _episode(env, "Answer: {gold}", "Answer: {wrong}")
    assert second[1] == -1.0 and second[4]["reward_components"]["improvement"] == -1.0
    _, second = _episode(env, "Answer: {gold}", "Answer: {gold}")
    assert second[1] == 0.0


def test_critique_refine_with_a_model_critic_and_custom_scorer():
    critic = ScriptedAgent(["Step two drops a sign."])
    env = CritiqueRefineEnv(tasks=["Write a greeting."], critic=critic, scorer=FixedFeedback())
    obs, _ = env.reset(seed=0)
    assert obs == "Write a greeting."
    obs, reward, *_ = env.step("hi")
    assert obs.startswith("Step two drops a sign.") and reward == 0.0
    assert env.step("Hello there!")[1] == 0.0  # same fixed score for both: no improvement
    with pytest.raises(ValueError, match="answer"):
        CritiqueRefineEnv(tasks=["Write a greeting."])  # the default verifier needs gold answers
    with pytest.raises(ValueError, match="max_turns"):
        CritiqueRefineEnv(max_turns=1)


def test_agents_built_from_specs_are_closed_and_ready_ones_are_not(monkeypatch):
    import aligngym.envs.model_feedback as model_feedback
    from aligngym.feedback.judge import Judge

    closed = []

    class Closing(ScriptedAgent):
        async def aclose(self):
            closed.append(self.name)

    monkeypatch.setattr(model_feedback, "resolve_agent", lambda spec: Closing(["Score: 10"], name=str(spec)))
    env = JudgeEnv(judge="some-model")
    env.reset(seed=0)
    assert env.step("ok")[1] == 1.0
    env.close()
    env.close()
    assert closed == ["some-model"]
    CritiqueRefineEnv(critic={"model": "critic-model"}).close()
    assert closed == ["some-model", "{'model': 'critic-model'}"]
    ready = Closing(["Score: 1"], name="ready")
    JudgeEnv(judge=Judge(ready)).close()
    assert len(closed) == 2
