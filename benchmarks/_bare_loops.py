"""The no-framework baselines of ``rollout_throughput.py``: plain ``openai.AsyncOpenAI`` loops, no env, no rows.

Each sends the requests aligngym's OpenAI agent would (the env's first messages, its tool schemas, the same
sampling fields) and returns ``(episodes/s, CPU seconds of this process per episode, errors)``.

* ``workers`` is the fair baseline: ``C`` worker tasks, each taking the next episode from a shared counter
  until none is left -- what a hand-written client does, and how ``aligngym.rollout`` schedules.
* ``gather_semaphore`` is the baseline earlier versions of the benchmark shipped: all ``N`` episodes created
  up front as coroutines and gathered under a semaphore of ``C``. Holding ``N`` pending coroutines and
  waking them through the semaphore costs CPU of its own, so it flatters whatever is compared with it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from _bench_server import TOOL_RESULT

Result = tuple[float, float, int]
#: Plays episode ``i`` with the client: raises on a failed request or an episode that went wrong.
Play = Callable[[openai.AsyncOpenAI, int], Awaitable[None]]
MODEL = "scripted"


def first_messages(env_id: str, env_kwargs: dict[str, Any], count: int) -> tuple[list[list[dict]], Any]:
    """The env's first chat messages for seeds ``0..count-1``, and its tool schemas (None without tools)."""
    import aligngym

    env = aligngym.make(env_id, **env_kwargs).unwrapped
    prompts = [env.reset(seed=seed)[1]["messages"] for seed in range(count)]
    tools = getattr(env, "tool_schemas", None)
    env.close()
    return prompts, tools


def _request(messages: list[dict], tools: Any) -> dict[str, Any]:
    # The fields OpenAIAgent.act sends by default, so both sides put the same bytes on the wire.
    kwargs: dict[str, Any] = {"model": MODEL, "messages": messages, "temperature": 1.0, "top_p": 1.0}
    if tools:
        kwargs["tools"] = tools
    return kwargs


def single_turn(prompts: list[list[dict]]) -> Play:
    """One chat call per episode with the episode's first messages."""

    async def play(client: openai.AsyncOpenAI, i: int) -> None:
        await client.chat.completions.create(**_request(prompts[i % len(prompts)], None))

    return play


def tool_turns(prompts: list[list[dict]], tools: Any, turns: int) -> Play:
    """Chat calls until a reply without tool calls: the assistant message and one tool result per call are
    appended each turn, as ToolUse does; an episode that does not end after ``turns`` turns is an error."""

    async def play(client: openai.AsyncOpenAI, i: int) -> None:
        messages = list(prompts[i % len(prompts)])
        for _ in range(turns):
            reply = await client.chat.completions.create(**_request(messages, tools))
            message = reply.choices[0].message
            if not message.tool_calls:
                return
            messages.append(message.model_dump(exclude_none=True))
            messages += [
                {"role": "tool", "tool_call_id": c.id, "name": c.function.name, "content": TOOL_RESULT}
                for c in message.tool_calls
            ]
        raise RuntimeError(f"episode {i} did not end within {turns} turns")

    return play


async def _timed(client: openai.AsyncOpenAI, episodes: int, run: Callable[[], Awaitable[int]]) -> Result:
    cpu0, t0 = time.process_time(), time.perf_counter()
    errors = await run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await client.close()
    return episodes / wall, cpu / max(episodes, 1), errors


async def _safely(play: Play, client: openai.AsyncOpenAI, i: int) -> int:
    """1 when episode ``i`` failed, else 0 (an error is counted, as aligngym counts a failed episode)."""
    try:
        await play(client, i)
    except (openai.OpenAIError, RuntimeError):
        return 1
    return 0


async def workers(base_url: str, episodes: int, concurrency: int, play: Play) -> Result:
    """``concurrency`` worker tasks pulling episode numbers from a shared counter (the fair baseline)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    counter = itertools.count()

    async def worker() -> int:
        errors = 0
        while (i := next(counter)) < episodes:
            errors += await _safely(play, client, i)
        return errors

    async def run() -> int:
        return sum(await asyncio.gather(*(worker() for _ in range(concurrency))))

    return await _timed(client, episodes, run)


async def gather_semaphore(base_url: str, episodes: int, concurrency: int, play: Play) -> Result:
    """The old baseline: every episode a coroutine up front, gathered under a semaphore of ``concurrency``."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with gate:
            return await _safely(play, client, i)

    async def run() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(episodes))))

    return await _timed(client, episodes, run)
