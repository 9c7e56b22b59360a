"""Trajectory rows for the viewer tests: real episodes of several envs, and a row made of attacks."""

from __future__ import annotations

import asyncio
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _helpers import solve

from aligngym.agents.base import AgentResponse
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.registry import make
from aligngym.episode import run_episode
from aligngym.trajectory import read_trajectories

ARITH, TOOLS, DEBATE = "aligngym/Arithmetic-v0", "aligngym/ToolUse-v0", "aligngym/Debate-v0"
PAYLOADS = (
    "</script><script>window.pwned=1</script>",
    '<img src=x onerror="window.pwned=2">',
    '<a href="javascript:window.pwned=3">click me</a>',
    "<!--<script>window.pwned=4</script>--> & &amp; \u2028\u2029",
)


class CalculatorAgent:
    """Calls the calculator natively (OpenAI tool_calls), then answers with its result."""

    name = "calculator-caller"

    async def act(self, messages, tools=None):
        if not any(m["role"] == "tool" for m in messages):
            call = {
                "id": "c1",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
            }
            return AgentResponse("let me compute", tool_calls=[call])
        return AgentResponse("Answer: " + messages[-1]["content"])

    async def aclose(self):
        pass


class BrokenAgent:
    """A backend that fails: the episode is recorded with its error."""

    name = "broken"

    async def act(self, messages, tools=None):
        raise RuntimeError("backend exploded <b>bold</b>")

    async def aclose(self):
        pass


def play(env_id: str, agent, seeds) -> list[dict]:
    """Rows of real episodes of ``env_id``: written as ``aligngym rollout`` writes them, read back."""

    async def episodes():
        env = make(env_id)
        trajs = []
        for i, seed in enumerate(seeds):
            trajs += await run_episode(env, agent, seed, env_id=env_id, episode=i)
        env.close()
        return trajs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        # A thread of its own: playwright's sync API keeps an event loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            trajs = pool.submit(asyncio.run, episodes()).result()
        path.write_text("".join(t.to_json() + "\n" for t in trajs))
        return read_trajectories(path)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mixed_rows_data() -> list[dict]:
    """Two episodes each: native tool calls, a failing backend, a three-seat debate, right answers."""
    return (
        play(TOOLS, CalculatorAgent(), [0, 1])
        + play(ARITH, BrokenAgent(), [0, 1])
        + play(DEBATE, ScriptedAgent(["42"]), [0, 1])
        + play(ARITH, ScriptedAgent(solve), [2, 3])
    )


def hostile_row() -> dict:
    """A row whose every model- or env-written string tries to become markup or script."""
    p1, p2, p3, p4 = PAYLOADS
    return {
        "env_id": p2,
        "episode": 0,
        "seed": 0,
        "episode_id": p3,
        "agent_id": p1,
        "num_agents": 1,
        "messages": [
            {"role": "user", "content": p1},
            {
                "role": "assistant",
                "content": p3,
                "tool_calls": [{"id": p4, "function": {"name": p2, "arguments": p1}}],
            },
            {"role": "tool", "tool_call_id": p1, "name": p3, "content": p2},
            {"role": p2, "content": [{"type": "text", "text": p4}]},
        ],
        "rewards": [1.0],
        "reward": 1.0,
        "reward_components": {p1: 1.0},
        "error": p2,
        "success": None,
        "info": {p3: p1},
        p2: p4,
    }
