"""The rollout loop in-process: concurrency, JSONL rows, failed episodes recorded, resume."""

from __future__ import annotations

import asyncio

from _helpers import solve

from aligngym.agents import ScriptedAgent
from aligngym.rollout import rollout
from aligngym.trajectory import read_trajectories


def test_rollout_writes_one_row_per_episode(tmp_path):
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        rollout(
            "aligngym/Arithmetic-v0",
            ScriptedAgent(solve),
            episodes=25,
            out=out,
            concurrency=4,
            progress=False,
        )
    )
    rows = read_trajectories(out)
    assert summary.written == 25 and summary.errors == 0
    assert sorted(r["episode"] for r in rows) == list(range(25))
    assert all(r["seed"] == r["episode"] for r in rows)
    assert all(r["reward"] == 1.5 and r["terminated"] for r in rows)
    assert summary.mean_reward == 1.5
    assert rows[0]["messages"][-1]["role"] == "assistant"
    assert rows[0]["reward_components"] == {"correct": 1.0, "format": 1.0}


def test_failed_episode_is_recorded_not_dropped(tmp_path):
    def flaky(messages):
        if messages[0]["content"].startswith("3"):
            raise ConnectionError("server went away")
        return solve(messages)

    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        rollout(
            "aligngym/Arithmetic-v0",
            ScriptedAgent(flaky),
            episodes=30,
            out=out,
            concurrency=3,
            progress=False,
        )
    )
    rows = read_trajectories(out)
    failed = [r for r in rows if r["error"]]
    assert len(rows) == 30 and summary.errors == len(failed) > 0
    assert all(r["error"] == "ConnectionError: server went away" for r in failed)
    assert all(r["reward"] == 0.0 and not r["terminated"] for r in failed)


def test_resume_runs_only_missing_episodes(tmp_path):
    out = tmp_path / "r.jsonl"
    agent = ScriptedAgent(solve)
    asyncio.run(rollout("aligngym/Arithmetic-v0", agent, episodes=5, out=out, progress=False))
    calls = agent.calls
    summary = asyncio.run(
        rollout("aligngym/Arithmetic-v0", agent, episodes=12, out=out, resume=True, progress=False)
    )
    assert summary.skipped == 5 and summary.written == 7
    assert agent.calls - calls == 7
    assert sorted(r["episode"] for r in read_trajectories(out)) == list(range(12))


def test_multi_turn_episode_keeps_every_turn(tmp_path):
    out = tmp_path / "r.jsonl"
    agent = ScriptedAgent(["wrong", "still wrong", "no"])
    asyncio.run(
        rollout(
            "aligngym/Arithmetic-v0", agent, episodes=2, out=out, env_kwargs={"max_turns": 3}, progress=False
        )
    )
    row = read_trajectories(out)[0]
    assert row["turns"] == 3 and row["truncated"] and len(row["rewards"]) == 3
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3


def test_progress_counts_turns_as_they_happen(tmp_path):
    from aligngym.envs.registry import make
    from aligngym.rollout import Tally, play_episode
    from aligngym.trajectory import TrajectoryWriter

    env = make("aligngym/Arithmetic-v0", max_turns=4).unwrapped
    with TrajectoryWriter(tmp_path / "r.jsonl") as writer:
        tally = Tally(writer, 1, "x", progress=True)
        seen = []
        traj = asyncio.run(
            play_episode(env, ScriptedAgent(["no"]), "x", 0, 0, on_turn=lambda: seen.append(tally.turn()))
        )
        # the bar moved with every turn, before the episode (and so the episode count) finished
        assert len(seen) == traj.turns == 4
        assert "turns 4" in tally.bar.status and tally.bar.completed == 0


def test_local_agent_keeps_the_prompt_within_the_window():
    from aligngym.agents.base import AgentResponse
    from aligngym.agents.local import TransformersAgent

    agent = TransformersAgent("tiny")
    window = agent.model.config.max_position_embeddings
    assert agent.max_prompt_tokens == window - agent.sampling.max_new_tokens
    prompts = []

    def fake_generate(prompt_ids):
        prompts.extend(prompt_ids)
        return [AgentResponse(text="ok") for _ in prompt_ids]

    agent._generate = fake_generate
    turns = [
        {"role": r, "content": f"turn {i} " + "lorem ipsum " * 20}
        for i in range(60)
        for r in ("assistant", "user")
    ]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "TASK: find the key"},
        *turns,
    ]
    asyncio.run(agent.act(messages))
    (ids,) = prompts
    assert len(ids) <= agent.max_prompt_tokens
    text = agent.tokenizer.decode(ids)
    # the task and the latest turn survive; the oldest turns went
    assert "TASK: find the key" in text and "turn 59" in text and "turn 0 " not in text
