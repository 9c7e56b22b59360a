"""``aligngym eval --reverify``: a grader fix changes exactly the episodes it should, replays that no longer fit
are flagged, and an unchanged env re-scores every stored episode to the same reward."""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import pytest
from _helpers import installed_standalone_ids, solve

import aligngym
from aligngym.agents.scripted import ReplayAgent, ScriptedAgent
from aligngym.cli import main
from aligngym.envs import registry
from aligngym.envs.arithmetic import ArithmeticEnv
from aligngym.envs.base import StepResult
from aligngym.reverify import first_difference, reverify
from aligngym.trajectory import read_trajectories

TEST_ID = "aligngym-test/Sum-v0"
#: The tests re-register TEST_ID to stand for today's grader; gymnasium warns each time.
pytestmark = pytest.mark.filterwarnings("ignore:.*Overriding environment")


class LenientArithmetic(ArithmeticEnv):
    """The grader before its fix: an answer one too high also counts as correct."""

    def turn(self, action: str) -> StepResult:
        if action.strip() == str(self.answer + 1):
            action = str(self.answer)
        return super().turn(action)


class TerseArithmetic(ArithmeticEnv):
    """Today's env with other words for a wrong answer: the stored replies answered a different chat."""

    def turn(self, action: str) -> StepResult:
        result = super().turn(action)
        if result.observation:
            result.observation = "No."
        return result


@pytest.fixture
def env_id():
    """Register ``TEST_ID`` as each test needs (``use(cls)``) and remove it afterwards."""

    def use(cls) -> str:
        registry.register(TEST_ID, cls)
        return TEST_ID

    yield use
    registry._ENTRIES.pop(TEST_ID, None)
    gym.envs.registration.registry.pop(TEST_ID, None)


def by_seed(answers: dict[int, list[str]]):
    """Replies per env seed (the first user message tells the seed's question), in turn order."""
    env = ArithmeticEnv()
    prompts = {env.reset(seed=s)[0]: replies for s, replies in answers.items()}

    def reply(messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        text = prompts[messages[0]["content"]][turn]
        return {"R": solve(messages), "+1": str(int(solve(messages)) + 1), "W": "-1"}.get(text, text)

    return reply


def _rollout(env_id, agent, out, **kwargs):
    asyncio.run(aligngym.rollout(env_id, agent, out=out, progress=False, **kwargs))


def test_a_grader_fix_changes_exactly_the_episodes_it_graded_wrong(env_id, tmp_path):
    stored = tmp_path / "old.jsonl"
    # Seeds 1 and 3 answer one too high: the lenient grader said correct. Two samples of each prompt.
    plan = {0: ["R"], 1: ["+1"], 2: ["W"], 3: ["+1"], 4: ["R"]}
    _rollout(
        env_id(LenientArithmetic), ScriptedAgent(by_seed(plan)), stored, episodes=5, samples_per_prompt=2
    )
    assert all(r["success"] for r in read_trajectories(stored) if r["seed"] != 2)

    env_id(ArithmeticEnv)  # the fix
    report = asyncio.run(reverify(stored, tmp_path / "new.jsonl"))
    assert sorted(r.episode for r in report.changed) == [2, 3, 6, 7]  # seeds 1 and 3, both samples
    assert all(
        (r.old_reward, r.new_reward, r.old_success, r.new_success) == (1.5, 0.5, True, False)
        for r in report.changed
    )
    assert report.diverged == [] and len(report.rescored) == 10
    summary = report.summary()
    assert summary["mean_reward_before"] == pytest.approx((1.5 * 8 + 0.5 * 2) / 10)
    assert summary["mean_reward_after"] == pytest.approx((1.5 * 4 + 0.5 * 6) / 10)
    new = read_trajectories(tmp_path / "new.jsonl")
    old = read_trajectories(stored)
    assert [(r["episode"], r["prompt_index"], r["sample_index"], r["seed"], r["agent"]) for r in new] == [
        (r["episode"], r["prompt_index"], r["sample_index"], r["seed"], r["agent"]) for r in old
    ]
    assert [r["success"] for r in new] == [True, True, False, False, False, False, False, False, True, True]


def test_replays_that_no_longer_fit_are_flagged(env_id, tmp_path):
    stored = tmp_path / "old.jsonl"
    # Seed 0 right at once; seed 1 wrong then right; seed 2 one too high, accepted then, refused now.
    plan = {0: ["R"], 1: ["W", "R"], 2: ["+1"]}
    agent = ScriptedAgent(by_seed(plan))
    _rollout(env_id(LenientArithmetic), agent, stored, episodes=3, env_kwargs={"max_turns": 2})

    env_id(TerseArithmetic)
    report = asyncio.run(reverify(stored, tmp_path / "new.jsonl"))
    first, second, third = report.rows
    assert (first.changed, first.diverged) == (False, None)
    # The same replies and rewards, but they answered "Wrong. Try again..." and today's env says "No.".
    assert second.changed is False and second.diverged == "message 2 (user) differs"
    # Today's env wants a second turn the stored episode never played.
    assert third.changed and third.new_reward is None and "ReplayExhausted" in third.diverged
    assert [r.episode for r in report.diverged] == [1, 2]


def test_an_unchanged_env_replays_every_episode_alike(tmp_path):
    from test_row_schema import TOOL_TASKS, ExpertToolCaller, write_tool_tasks

    tasks = write_tool_tasks(tmp_path / "tasks.jsonl")
    tools = tmp_path / "tools.jsonl"  # native tool calls, replayed as tool_calls
    _rollout(
        "aligngym/ToolUse-v0",
        ExpertToolCaller(),
        tools,
        episodes=len(TOOL_TASKS),
        env_kwargs={"tasks": str(tasks)},
    )
    debate = tmp_path / "debate.jsonl"  # one replay agent per seat, grouped by episode_id
    _rollout("aligngym/Debate-v0", ScriptedAgent(["I think 4", "Answer: 4"]), debate, episodes=2)
    for path in (tools, debate):
        report = asyncio.run(reverify(path, tmp_path / f"{path.stem}.new.jsonl"))
        assert report.changed == [] and report.diverged == [] and len(report.rescored) == len(report.rows)
        new = read_trajectories(tmp_path / f"{path.stem}.new.jsonl")
        old = read_trajectories(path)
        assert [r["messages"] for r in new] == [r["messages"] for r in old]
        assert [(r["reward"], r["agent_id"]) for r in new] == [(r["reward"], r["agent_id"]) for r in old]


def test_failed_rows_are_kept_as_they_were(tmp_path):
    def flaky(messages):
        if messages[0]["content"] == ArithmeticEnv().reset(seed=1)[0]:
            raise ConnectionError("server went away")
        return solve(messages)

    stored = tmp_path / "old.jsonl"
    _rollout("aligngym/Arithmetic-v0", ScriptedAgent(flaky), stored, episodes=3)
    report = asyncio.run(reverify(stored, tmp_path / "new.jsonl"))
    assert [r.skipped for r in report.rows] == [
        None,
        "the stored episode failed: ConnectionError: server went away",
        None,
    ]
    assert read_trajectories(tmp_path / "new.jsonl")[1] == read_trajectories(stored)[1]


def test_first_difference_and_the_replay_agent():
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert first_difference(chat, [dict(m) for m in chat]) is None
    assert first_difference(chat, chat[:1]) == "the replay has 1 messages, the stored episode 2"
    assert (
        first_difference(chat, [chat[0], {"role": "assistant", "content": "b"}])
        == "message 1 (assistant) differs"
    )
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    agent = ReplayAgent([*chat, {"role": "assistant", "content": "", "tool_calls": [call]}])
    assert asyncio.run(agent.act([])).text == "a"
    assert asyncio.run(agent.act([])).tool_calls == [call]
    with pytest.raises(RuntimeError, match="turn 3; the stored episode has 2"):
        asyncio.run(agent.act([]))


def test_cli_reverify(env_id, tmp_path, capsys):
    stored = tmp_path / "old.jsonl"
    _rollout(env_id(LenientArithmetic), ScriptedAgent(by_seed({0: ["R"], 1: ["+1"]})), stored, episodes=2)
    env_id(ArithmeticEnv)
    out = tmp_path / "rv"
    assert main(["eval", "--reverify", str(stored), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "episode 1: reward 1.5 -> 0.5, success True -> False" in printed
    assert "changed         1" in printed and "mean reward     1.5000 -> 1.0000" in printed
    report = json.loads((out / "reverify.json").read_text())
    assert (report["changed"], report["rescored"], report["diverged"]) == (1, 2, 0)
    assert len(read_trajectories(out / "old.reverified.jsonl")) == 2
    assert main(["eval", "--reverify", str(stored), "--out", str(out)]) == 2  # exists: --overwrite


@pytest.mark.slow
def test_every_registered_env_replays_its_episodes_alike(tmp_path):
    for env_id in installed_standalone_ids():
        path = tmp_path / f"{env_id.replace('/', '_')}.jsonl"
        _rollout(env_id, ScriptedAgent(["Answer: 4", "ok"]), path, episodes=2)
        report = asyncio.run(reverify(path, tmp_path / "new.jsonl"))
        assert (report.changed, report.diverged) == ([], []), env_id
