from __future__ import annotations

import gymnasium as gym
import pytest

import aligngym  # noqa: F401  (registers the envs)


def make(**kwargs):
    return gym.make("aligngym/Arithmetic-v0", **kwargs).unwrapped


def test_correct_answer_earns_full_reward():
    env = make()
    obs, info = env.reset(seed=3)
    _, reward, terminated, truncated, info = env.step(str(info["answer"]))
    assert reward == pytest.approx(1.5)
    assert terminated and not truncated
    assert info["reward_components"] == {"correct": 1.0, "format": 1.0}


def test_wrong_and_malformed_answers():
    env = make()
    _, info = env.reset(seed=3)
    wrong = str(info["answer"] + 1)
    _, reward, terminated, truncated, info = env.step(wrong)
    assert info["reward_components"]["correct"] == 0.0 and reward == pytest.approx(0.5)
    assert terminated and not truncated  # single-turn: the one answer ends the task
    env.reset(seed=3)
    _, reward, *_, info = env.step("no idea")
    assert reward == 0.0 and info["reward_components"]["format"] == 0.0
    env.reset(seed=3)
    _, reward, *_, info = env.step("1234567")  # digits, but longer than any answer can be
    assert info["reward_components"]["format"] == pytest.approx(0.5)


def test_multi_turn_pays_only_improvement():
    env = make(max_turns=3)
    _, info = env.reset(seed=1)
    answer = info["answer"]
    obs, r1, terminated, truncated, _ = env.step("x")
    assert not (terminated or truncated) and "Wrong" in obs
    _, info = env.reset(seed=1)
    env.step("x")
    env.step("x")
    assert env.step("x")[3], "out of turns: truncated"
    _, info = env.reset(seed=1)
    obs, r1, terminated, truncated, _ = env.step("x")
    _, r2, terminated, _, info = env.step(str(answer))
    assert terminated
    assert r1 + r2 == pytest.approx(1.5)
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant"]


def test_operators_and_validation():
    env = make(operators="*", max_operand=12)
    obs, info = env.reset(seed=0)
    a, b = obs.rstrip("=").split("*")
    assert int(a) * int(b) == info["answer"]
    with pytest.raises(ValueError, match="operators"):
        make(operators="/")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("1")  # the episode above is still open, so step once to finish it, then again
        env.step("1")
