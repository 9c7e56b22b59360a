"""One row schema for every env: rollout files of different envs load together with ``datasets``, and decode
back to exactly what ``read_trajectories`` gives; rows of the previous format still read."""

from __future__ import annotations

import asyncio
import json

import datasets
import pytest
from _helpers import installed_standalone_ids, solve

import aligngym
from aligngym.agents.base import AgentResponse
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.tool_use import load_tasks
from aligngym.rows import PROVENANCE, decode_row, encode_row
from aligngym.trajectory import Trajectory, TrajectoryWriter, read_trajectories

TOOL_TASKS = ("search-07", "sql-03", "calc-09")


class ExpertToolCaller:
    """Calls the task's first expert tool natively (``tool_calls``), then answers: tool and tool-call keys."""

    name = "tool-caller"

    def __init__(self):
        self.tasks = [t for t in load_tasks() if t.id in TOOL_TASKS]

    async def act(self, messages, tools=None):
        task = next(t for t in self.tasks if any(t.question in (m.get("content") or "") for m in messages))
        if not any(m["role"] == "tool" for m in messages):
            call = task.expert[0]
            function = {"name": call["name"], "arguments": call["arguments"]}
            return AgentResponse(
                text="", tool_calls=[{"id": "call_x", "type": "function", "function": function}]
            )
        return AgentResponse(text=f"Answer: {task.answer}")

    async def aclose(self):
        pass


def _roll(tmp_path, name, env_id, agent, episodes=2, **kwargs):
    out = tmp_path / f"{name}.jsonl"
    asyncio.run(aligngym.rollout(env_id, agent, episodes=episodes, out=out, progress=False, **kwargs))
    return out


def _load(files, tmp_path):
    cache = tmp_path / "hf-cache"
    return datasets.load_dataset(
        "json", data_files=[str(f) for f in files], split="train", cache_dir=str(cache)
    )


def _assert_loads_together(files, tmp_path):
    """Every file first once (the first file fixes the column types), and each row decodes back exactly."""
    expected = {str(f): read_trajectories(f) for f in files}
    for first in files:
        order = [first] + [f for f in files if f != first]
        ds = _load(order, tmp_path / first.stem)
        rows = [row for f in order for row in expected[str(f)]]
        assert len(ds) == len(rows)
        assert [decode_row(r) for r in ds] == rows


def write_tool_tasks(path):
    """The ToolUse tasks (with their expert calls) as a tasks JSONL file for ``tasks=``; returns ``path``."""
    path.write_text(
        "".join(
            json.dumps({"id": t.id, "question": t.question, "answer": t.answer, "expert": list(t.expert)})
            + "\n"
            for t in _tool_tasks()
        )
    )
    return path


def test_rollouts_of_different_envs_load_together(tmp_path):
    tasks = write_tool_tasks(tmp_path / "tasks.jsonl")

    def flaky(messages):
        if messages[0]["content"] == "4+5=":  # seed 1
            raise ConnectionError("server went away")
        return solve(messages)

    from aligngym.agents.local import TransformersAgent

    files = [
        _roll(tmp_path, "arith-error", "aligngym/Arithmetic-v0", ScriptedAgent(flaky), episodes=3),
        _roll(tmp_path, "tools", "aligngym/ToolUse-v0", ExpertToolCaller(), env_kwargs={"tasks": str(tasks)}),
        _roll(tmp_path, "debate", "aligngym/Debate-v0", ScriptedAgent(["Answer: 4"])),
        _roll(tmp_path, "judge", "aligngym/Judge-v0", ScriptedAgent(["Score: 7"])),  # no notion of success
        _roll(tmp_path, "tokens", "aligngym/Arithmetic-v0", TransformersAgent("tiny"), samples_per_prompt=2),
    ]
    rows = {f.stem: read_trajectories(f) for f in files}
    # The files do differ in every way a schema could: errors, tool messages, seats, success, tokens.
    assert [r["error"] for r in rows["arith-error"]] == [None, "ConnectionError: server went away", None]
    assert any(m.get("tool_calls") for m in rows["tools"][0]["messages"])
    tool_results = [m for r in rows["tools"] for m in r["messages"] if m["role"] == "tool"]
    assert tool_results and all(m["tool_call_id"] == "call_x" and m["name"] for m in tool_results)
    assert {r["agent_id"] for r in rows["debate"]} == {"agent_0", "agent_1", "agent_2"}
    assert {r["success"] for r in rows["judge"]} == {None}
    assert all(r["tokens"] for r in rows["tokens"]) and "tokens" not in rows["judge"][0]
    _assert_loads_together(files, tmp_path)


def _tool_tasks():
    return [t for t in load_tasks() if t.id in TOOL_TASKS]


@pytest.mark.slow
def test_rows_of_every_registered_env_load_together(tmp_path):
    files = [
        _roll(tmp_path, env_id.replace("/", "_"), env_id, ScriptedAgent(["Answer: 4"]))
        for env_id in installed_standalone_ids()
    ]
    assert all(read_trajectories(f) for f in files)
    _assert_loads_together(files, tmp_path)


def _full_trajectory(**overrides) -> Trajectory:
    traj = Trajectory(
        env_id="x/Y-v0",
        episode=5,
        seed=7,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "function": {"name": "sql", "arguments": {"query": "SELECT 1"}}}],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "sql", "content": "1"},
            {"role": "assistant", "content": "Answer: 1"},
        ],
        rewards=[0.0, 1.0],
        reward=1.0,
        terminated=True,
        info={"nested": {"a": [1, 2]}, "text": "é"},
        reward_components={"answer": 1.0, "format": 0.5},
        turns=2,
        agent="m",
        episode_id="e1",
        agent_id="seat_1",
        num_agents=2,
        env_kwargs={"max_turns": 3},
        success=True,
        samples_per_prompt=2,
        tokens=[{"turn": 0, "prompt_ids": [1], "completion_ids": [2, 3], "logprobs": None}],
        env_package="x-envs",
        env_package_version="2.0",
        aligngym_version="0.1.0",
    )
    for key, value in overrides.items():
        setattr(traj, key, value)
    return traj


@pytest.mark.parametrize("success", [True, False, None])
def test_a_row_round_trips_through_the_file_format(success):
    traj = _full_trajectory(success=success)
    row = json.loads(traj.to_json())
    assert row["success"] is bool(success) and row["success_defined"] is (success is not None)
    assert isinstance(row["info"], str) and isinstance(row["tokens"], str)
    assert row["reward_components"] == [{"name": "answer", "value": 1.0}, {"name": "format", "value": 0.5}]
    assert all(list(m) == ["role", "content", "name", "tool_call_id", "tool_calls"] for m in row["messages"])
    assert (row["prompt_index"], row["sample_index"]) == (2, 1)  # episode 5 with 2 samples per prompt
    assert Trajectory.from_dict(row) == traj
    assert encode_row(decode_row(row)) == row and decode_row(decode_row(row)) == decode_row(row)


def test_missing_values_are_typed_empties_not_nulls():
    row = json.loads(Trajectory(env_id="x/Y-v0", episode=0, seed=0).to_json())
    assert (row["error"], row["agent"], row["agent_id"], row["tokens"]) == ("", "", "", "")
    assert (row["success"], row["success_defined"], row["reward"]) == (False, False, 0.0)
    assert (row["env_package"], row["env_package_version"], row["aligngym_version"]) == ("", "", "")
    back = Trajectory.from_dict(row)
    assert (back.error, back.agent, back.agent_id, back.tokens, back.success) == (
        None,
        None,
        None,
        None,
        None,
    )


LEGACY = {
    "env_id": "aligngym/Arithmetic-v0",
    "episode": 3,
    "seed": 3,
    "messages": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}],
    "rewards": [1.5],
    "reward": 1.5,
    "terminated": True,
    "truncated": False,
    "info": {"answer": 3, "turn": 1},
    "error": None,
    "reward_components": {"correct": 1.0, "format": 1.0},
    "turns": 1,
    "agent": "scripted",
    "episode_id": "abc",
    "duration_s": 0.1,
    "agent_id": None,
    "num_agents": 1,
    "env_kwargs": {},
    "success": True,
}


def test_rows_of_the_previous_format_still_read_and_resume_rewrites_them(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(LEGACY) + "\n")
    (row,) = read_trajectories(path)
    assert row["info"] == {"answer": 3, "turn": 1} and row["reward_components"]["correct"] == 1.0
    assert (row["prompt_index"], row["sample_index"], row["samples_per_prompt"]) == (3, 0, 1)
    assert (row["env_package"], row["env_package_version"], row["aligngym_version"]) == ("", "", "")
    traj = Trajectory.from_dict(LEGACY)
    assert traj.success is True and traj.error is None and traj.messages == LEGACY["messages"]
    with TrajectoryWriter(path, resume=True) as writer:
        assert writer.done == {3}
        writer.write(Trajectory(env_id="aligngym/Arithmetic-v0", episode=4, seed=4))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [isinstance(r["info"], str) for r in lines] == [True, True]  # one format in the file
    assert [r["aligngym_version"] for r in lines] == ["", ""]
    assert read_trajectories(path)[0] == row


def test_rows_record_the_env_package_and_a_file_from_before_is_rewritten_on_resume(tmp_path):
    path = _roll(tmp_path, "arith", "aligngym/Arithmetic-v0", ScriptedAgent(["4"]), episodes=1)
    (row,) = read_trajectories(path)
    assert (row["env_package"], row["env_package_version"]) == ("aligngym", aligngym.__version__)
    assert row["aligngym_version"] == aligngym.__version__
    # The format just before these columns: resuming it adds them ("" = unknown) so the file has one schema.
    before = {k: v for k, v in json.loads(path.read_text()).items() if k not in PROVENANCE}
    path.write_text(json.dumps(before) + "\n")
    assert read_trajectories(path)[0]["env_package"] == ""
    with TrajectoryWriter(path, resume=True) as writer:
        writer.write(Trajectory(env_id="aligngym/Arithmetic-v0", episode=1, seed=1, env_package="aligngym"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["env_package"] for r in lines] == ["", "aligngym"]
    assert all(list(r)[-4:] == [*PROVENANCE, "tokens"] for r in lines)  # same columns, same order
    _load([path], tmp_path)
