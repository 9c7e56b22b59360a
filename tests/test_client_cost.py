"""The client's per-turn and per-request work stays flat: counted in copies and tasks, never timed."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from aligngym.agents.openai_agent import OpenAIAgent
from aligngym.agents.server import ScriptedChatServer
from aligngym.envs.base import StepResult, TextEnv

USER = [{"role": "user", "content": "say something"}]


class _Echo(TextEnv):
    """Multi-turn: each answer comes back as the next user message; a tool-style turn adds two messages."""

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        return "start", {}

    def turn(self, action: str) -> StepResult:
        if action == "tool":
            return StepResult(messages=[{"role": "tool", "content": "result"}])
        return StepResult(observation=f"you said {action}")


def _play(env: TextEnv, actions: list[str]) -> list[dict[str, Any]]:
    _, info = env.reset(seed=0)
    infos = [info]
    for action in actions:
        infos.append(env.step(action)[4])
    return infos


def test_info_messages_reads_as_the_chat_so_far_at_every_step():
    env = _Echo(max_turns=4, system_prompt="be brief")
    infos = _play(env, ["a", "tool", "b", "c"])
    chats = [info["messages"] for info in infos]
    assert [len(c) for c in chats] == [2, 4, 6, 8, 9]
    assert chats[-1] == env.messages
    # each step's list is its own snapshot: later steps neither grow nor change it
    assert chats[1] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "start"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "you said a"},
    ]
    assert chats[2][-2:] == [{"role": "assistant", "content": "tool"}, {"role": "tool", "content": "result"}]
    assert len({id(c) for c in chats}) == len(chats)
    # a new episode starts a new chat
    _, info = env.reset(seed=1)
    assert info["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "start"},
    ]


def test_a_turn_copies_only_the_messages_it_added():
    env = _Echo(max_turns=6)
    chats = [info["messages"] for info in _play(env, ["a", "b", "tool", "c"])]
    for before, after in zip(chats, chats[1:], strict=False):
        # the messages an earlier step showed are shown again as they are, not copied again
        assert all(x is y for x, y in zip(before, after, strict=False))
    # ... and they are copies: what the env keeps (and scores from) is not what it hands out
    assert not any(shown is kept for shown, kept in zip(chats[-1], env.messages, strict=True))


def test_editing_info_messages_does_not_reach_the_env():
    env = _Echo(max_turns=3)
    _, info = env.reset(seed=0)
    info["messages"][0]["content"] = "edited"
    info["messages"].append({"role": "user", "content": "injected"})
    *_, info = env.step("a")
    assert env.messages[0]["content"] == "start"
    assert [m["role"] for m in env.messages] == ["user", "assistant", "user"]
    assert len(info["messages"]) == 3


def _tasks_started(make_client) -> int:
    """Tasks the loop creates while one chat request is answered (the connection already open)."""

    async def main() -> int:
        created = 0
        loop = asyncio.get_running_loop()

        def factory(loop, coro, **kwargs):
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        client, call, close = make_client()
        await call(client)  # opens the connection
        loop.set_task_factory(factory)
        await call(client)
        loop.set_task_factory(None)
        await close(client)
        return created

    return asyncio.run(main())


def test_the_agents_request_limits_start_no_task_per_request():
    # The deadline and the size cap once ran each read under asyncio.wait_for: three tasks per request.
    with ScriptedChatServer(["hello"]).run_in_thread() as srv:

        def bare():
            async def call(client):
                await client.chat.completions.create(model="scripted", messages=USER)

            async def close(client):
                await client.close()

            return openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0), call, close

        def ours():
            async def call(agent):
                assert (await agent.act(USER)).text == "hello"

            async def close(agent):
                await agent.aclose()

            return OpenAIAgent("scripted", srv.base_url, max_retries=0), call, close

        assert _tasks_started(ours) == _tasks_started(bare)
