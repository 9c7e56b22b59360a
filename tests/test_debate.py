"""Debate-v0 (Du et al. 2023): protocol, rewards, majority vote, shipped questions, self-play rollouts."""

from __future__ import annotations

import asyncio
import re

import pytest
from _helpers import run_cli

import aligngym
from aligngym.agents import ScriptedAgent
from aligngym.envs.debate import Question, load_questions
from aligngym.trajectory import read_trajectories


def arithmetic_answer(messages):
    expr = re.search(r"result of ([\d+*\-]+)\?", messages[0]["content"]).group(1)
    a, b, c, d, e, f = (int(x) for x in re.findall(r"\d+", expr))
    return f"The result is {a + b * c + d - e * f}"


def test_rounds_and_observations_follow_du_et_al():
    env = aligngym.make("aligngym/Debate-v0", num_agents=3, rounds=2)
    obs, _ = env.reset(seed=1)
    assert len(set(obs.values())) == 1 and "single number" in obs["agent_0"]
    obs, rewards, terms, truncs, _ = env.step(
        {"agent_0": "A says 1", "agent_1": "B says 2", "agent_2": "C says 3"}
    )
    assert not any(terms.values()) and set(rewards.values()) == {0.0}
    # Each agent sees the others' latest answers, not its own.
    assert "B says 2" in obs["agent_0"] and "C says 3" in obs["agent_0"] and "A says 1" not in obs["agent_0"]
    env.step({a: "x" for a in env.agents})
    assert env.agents  # rounds=2: an initial answer plus two revisions
    env.step({a: "x" for a in env.agents})
    assert env.agents == []


def test_truthful_majority_wins_the_vote():
    env = aligngym.make("aligngym/Debate-v0", num_agents=3, rounds=1)
    env.reset(seed=5)
    gold = env.question.answer
    for _ in range(2):
        _, rewards, terms, _, infos = env.step(
            {"agent_0": f"It is {gold}", "agent_1": f"So {gold}", "agent_2": "It is 99999"}
        )
    assert all(terms.values())
    assert rewards == {"agent_0": 1.0, "agent_1": 1.0, "agent_2": 0.0}
    episode = infos["agent_2"]["episode"]
    assert episode["majority_answer"] == gold and episode["majority_correct"] is True
    assert infos["agent_2"]["reward_components"] == {"correct": 0.0, "majority_correct": 1.0}


def test_lying_majority_loses_the_vote():
    env = aligngym.make("aligngym/Debate-v0", num_agents=3, rounds=0)
    env.reset(seed=5)
    gold = env.question.answer
    _, rewards, _, _, infos = env.step(
        {"agent_0": f"It is {gold}", "agent_1": "It is 1", "agent_2": "It is 1"}
    )
    assert rewards["agent_0"] == 1.0 and infos["agent_0"]["episode"]["majority_correct"] is False


def test_shipped_questions_and_answer_kinds():
    questions = load_questions("questions")
    assert len(questions) >= 100
    kinds = {q.kind for q in questions}
    assert "mc" in kinds and ({"short", "number"} & kinds)
    mc = Question.from_row({"id": "m", "question": "Pick", "choices": ["a", "b", "c", "d"], "answer": "c"})
    assert mc.is_correct(mc.extract("I believe (C) is right")) and not mc.is_correct(mc.extract("(A)"))
    short = Question.from_row(
        {"id": "s", "question": "Capital of France?", "answer": "Paris", "aliases": ["paris france"]}
    )
    assert short.is_correct(short.extract("Answer: Paris.")) and not short.is_correct(
        short.extract("Answer: Lyon")
    )
    number = Question.from_row({"id": "n", "question": "2+2?", "answer": "4"})
    assert number.is_correct(number.extract("so the total is 4.")) and not number.is_correct(
        number.extract("5")
    )
    with pytest.raises(ValueError, match="needs 'question'"):
        Question.from_row({"id": "bad"})
    env = aligngym.make("aligngym/Debate-v0", tasks="questions", num_agents=2, rounds=1)
    obs, _ = env.reset(seed=0)
    assert env.question.question in obs["agent_0"]


def test_self_play_rollout_writes_one_row_per_agent(tmp_path):
    out = tmp_path / "d.jsonl"
    agent = ScriptedAgent(arithmetic_answer)
    summary = asyncio.run(aligngym.rollout("aligngym/Debate-v0", agent, episodes=4, out=out, progress=False))
    rows = read_trajectories(out)
    assert summary.written == 4 and len(rows) == 12
    for episode in range(4):
        seats = [r for r in rows if r["episode"] == episode]
        assert sorted(r["agent_id"] for r in seats) == ["agent_0", "agent_1", "agent_2"]
        assert len({r["episode_id"] for r in seats}) == 1
        assert all(r["reward"] == 1.0 and r["num_agents"] == 3 for r in seats)
        assert all(len(r["messages"]) == 6 for r in seats)  # 3 rounds: user/assistant each


@pytest.mark.slow
def test_cli_self_play_with_tiny_model_and_per_seat_server(chat_server, tmp_path):
    out = tmp_path / "tiny.jsonl"
    result = run_cli(
        "rollout",
        "aligngym/Debate-v0",
        *("--model", "tiny", "--episodes", 3, "--max-tokens", 8, "--out", out, "--no-progress"),
        *("--env-kwargs", '{"num_agents": 2, "rounds": 1}'),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = read_trajectories(out)
    assert len(rows) == 6 and all(r["agent"] == "tiny" and r["error"] is None for r in rows)

    server = chat_server(lambda messages, request: arithmetic_answer(messages))
    out = tmp_path / "server.jsonl"
    seats = ("--model", "agent_0=policy-a", "--model", "agent_1=policy-b", "--model", "agent_2=policy-a")
    result = run_cli(
        "rollout",
        "aligngym/Debate-v0",
        *("--base-url", server.base_url, *seats, "--episodes", 3, "--out", out, "--no-progress"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = read_trajectories(out)
    assert len(rows) == 9 and all(r["reward"] == 1.0 for r in rows)
    assert {r["agent_id"]: r["agent"] for r in rows} == {
        "agent_0": "policy-a",
        "agent_1": "policy-b",
        "agent_2": "policy-a",
    }
