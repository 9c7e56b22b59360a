"""The one episode driver and the async-first env lifecycle: every path plays episodes the same way."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from _helpers import run_cli

import aligngym
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.base import StepResult, TextEnv
from aligngym.episode import EnvPool, run_episode
from aligngym.trajectory import read_trajectories

ARITH = "aligngym/Arithmetic-v0"


class _Counting(TextEnv):
    """A sync-hook env that records which thread and loop each hook ran on."""

    def __init__(self, fail_on_turn: bool = False):
        super().__init__(max_turns=2)
        self.fail_on_turn = fail_on_turn
        self.calls: list[tuple[str, bool]] = []

    def _note(self, name: str) -> None:
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False
        self.calls.append((name, running))

    def new_episode(self, options):
        self._note("new_episode")
        return "say hi", {}

    def turn(self, action: str) -> StepResult:
        self._note("turn")
        if self.fail_on_turn:
            raise RuntimeError("env broke")
        return StepResult("again", 1.0, action == "hi")

    def end_episode(self) -> None:
        self._note("end_episode")


class _Waiting(TextEnv):
    """An env whose hooks are async: they await, so they must never block the loop."""

    def __init__(self):
        super().__init__(max_turns=1)
        self.ended = 0

    async def anew_episode(self, options):
        await asyncio.sleep(0)
        return "go", {}

    async def aturn(self, action: str) -> StepResult:
        await asyncio.sleep(0)
        return StepResult("", float(action == "go"), True)

    async def aend_episode(self) -> None:
        await asyncio.sleep(0)
        self.ended += 1


def test_a_sync_env_steps_without_an_event_loop():
    env = _Counting()
    env.reset(seed=0)
    env.step("hi")
    # reset and step are wrappers around the async core, finished without a loop for an all-sync env
    assert env.calls == [("new_episode", False), ("turn", False), ("end_episode", False)]


def test_an_async_env_works_through_the_sync_api_and_inside_a_running_loop():
    env = _Waiting()
    env.reset(seed=0)
    assert env.step("go")[1] == 1.0 and env.ended == 1

    async def inside() -> float:  # a sync step called from async code (a notebook) must not deadlock
        env.reset(seed=1)
        return env.step("go")[1]

    assert asyncio.run(inside()) == 1.0 and env.ended == 2


def test_an_env_must_implement_each_hook_in_one_form():
    class Half(TextEnv):
        def new_episode(self, options):
            return "x", {}

    with pytest.raises(TypeError, match="turn or aturn"):
        Half()


def test_run_episode_records_an_env_error_and_the_pool_replaces_that_env():
    pool = EnvPool(ARITH)
    broken = _Counting(fail_on_turn=True)
    asyncio.run(pool.give_back(broken, ok=True))
    assert pool.take() is broken
    [traj] = asyncio.run(run_episode(broken, ScriptedAgent(["hi"]), seed=0, env_id="x"))
    assert traj.error == "RuntimeError: env broke" and traj.turns == 0
    asyncio.run(pool.give_back(broken, ok=not traj.error))
    assert pool.take() is not broken  # a failed episode's env is never reused


def test_play_episode_and_rollout_are_the_one_driver(tmp_path):
    env = aligngym.make(ARITH)
    agent = ScriptedAgent(["7"])
    direct = asyncio.run(run_episode(env, agent, seed=3, env_id=ARITH, episode=3))[0]
    via_play = asyncio.run(aligngym.play_episode(env, agent, ARITH, 3, 3))
    out = tmp_path / "r.jsonl"
    asyncio.run(aligngym.rollout(ARITH, agent, episodes=4, out=out, concurrency=2, progress=False))
    row = next(r for r in read_trajectories(out) if r["episode"] == 3)
    keep = ("messages", "reward", "rewards", "turns", "terminated", "seed", "error")
    assert {k: row[k] for k in keep} == {k: getattr(direct, k) for k in keep}
    assert {k: getattr(via_play, k) for k in keep} == {k: getattr(direct, k) for k in keep}


@pytest.mark.slow
def test_terminal_with_64_episodes_in_flight_and_4_sandboxes_finishes(chat_server, tmp_path):
    # Each episode waits for one of 4 sandboxes; a reset that blocked the loop on it would stall them all.
    server = chat_server(lambda messages, request: "```bash\necho hi > out.txt\n```")
    out = tmp_path / "t.jsonl"
    env = {**os.environ, "ALIGNGYM_MAX_SANDBOXES": "4"}
    result = run_cli(
        "rollout",
        "aligngym/Terminal-v0",
        *("--model", "scripted", "--base-url", server.base_url, "--episodes", 64, "--concurrency", 64),
        *("--env-kwargs", '{"sandbox": "local", "max_turns": 2}', "--out", out, "--no-progress"),
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_trajectories(out)
    assert sorted(r["episode"] for r in rows) == list(range(64))
    assert not [r["error"] for r in rows if r["error"]]


def test_the_async_core_runs_hooks_on_the_loop_thread():
    env = _Counting()
    seen = []

    async def main():
        seen.append(threading.get_ident())
        await env.areset(seed=0)
        await env.astep("hi")

    asyncio.run(main())
    assert [running for _, running in env.calls] == [True, True, True]


def test_a_subclass_sync_hook_overrides_its_ancestors_async_one():
    class Sync(_Waiting):
        def turn(self, action: str) -> StepResult:
            return StepResult("", 7.0, True)

    env = Sync()
    env.reset(seed=0)
    assert env.step("go")[1] == 7.0  # the subclass's turn, not _Waiting's aturn
    env.reset(seed=1)
    assert asyncio.run(env.astep("go"))[1] == 7.0  # the async core picks the same one


def test_the_sync_form_of_an_async_hook_runs_it():
    env = _Waiting()
    env.reset(seed=0)
    assert env.turn("go").reward == 1.0 and env.new_episode(None) == ("go", {})
