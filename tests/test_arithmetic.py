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


def test_an_expression_equal_to_the_result_is_not_an_answer():
    # The question echoed back ("5+9") evaluates to its own answer; a copying policy must not earn `correct`.
    env = make(max_operand=9, format_weight=0.0)
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        a, b = obs.rstrip("=").split("+")
        gold = info["answer"]
        echoes = [f"{a}+{b}", f"{b}+{a}", f"{gold}+0", f"{gold}*1", f"\\boxed{{{a}+{b}}}", f"{gold}+x-x"]
        for expression in echoes:
            env.reset(seed=seed)
            assert env.step(expression)[1] == 0.0, expression
        for answer in [str(gold), f"The sum is {gold}.", f"{a}+{b}={gold}", f"0{gold}"]:
            env.reset(seed=seed)
            assert env.step(answer)[1] == 1.0, answer


def test_split_holds_out_a_fixed_part_of_the_questions():
    from aligngym.envs.arithmetic import all_questions, split_questions

    questions = all_questions(9, "+")
    split = split_questions(questions, 0.2)
    assert len(split["test"]) == 20 and len(split["train"]) == 80
    assert set(split["train"]) | set(split["test"]) == set(questions)
    assert not set(split["train"]) & set(split["test"])
    assert split_questions(list(reversed(questions)), 0.2)["test"] == sorted(split["test"], reverse=True)
    seen = {}
    for name in ("train", "test"):
        env = make(max_operand=9, split=name)
        seen[name] = {env.reset(seed=seed)[0] for seed in range(1500)}
        # Every question of its side and no other.
        assert seen[name] == {f"{a}{op}{b}=" for a, op, b in split[name]}
    short = all_questions(9, "+", max_answer_chars=1)
    assert len(short) == 55 and all(a + b <= 9 for a, _, b in short)


def test_default_draw_is_unchanged_and_split_kwargs_are_checked():
    import numpy as np

    env = make(max_operand=7, operators="+*")
    for seed in range(10):
        rng = np.random.default_rng(seed)
        a, b = (int(x) for x in rng.integers(0, 8, size=2))
        op = "+*"[int(rng.integers(0, 2))]
        assert env.reset(seed=seed)[0] == f"{a}{op}{b}="  # seeds keep the questions they always had
    with pytest.raises(ValueError, match="split"):
        make(split="validation")
    with pytest.raises(ValueError, match="test_fraction"):
        make(split="test", test_fraction=1.0)
    with pytest.raises(ValueError, match="max_answer_chars"):
        make(max_operand=1, operators="*", max_answer_chars=0)
    env = make(max_operand=9, max_answer_chars=1, format_weight=0.5)
    env.reset(seed=0)
    assert env.step("10")[4]["reward_components"]["format"] < 1.0  # longer than any answer of this env


def test_unary_notation_asks_in_tally_marks_and_grades_the_number():
    env = make(max_operand=9, notation="unary", format_weight=0.0)
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        a, b = obs.rstrip("=").split("+")
        assert set(a + b) <= {"|"} and len(a) + len(b) == info["answer"]
        for echo in [obs, obs.rstrip("="), "|" * info["answer"], f"{len(a)}+{len(b)}"]:
            env.reset(seed=seed)
            assert env.step(echo)[1] == 0.0, echo  # the question or its marks are not the answer
        env.reset(seed=seed)
        assert env.step(str(info["answer"]))[1] == 1.0
    with pytest.raises(ValueError, match="notation"):
        make(notation="roman")
