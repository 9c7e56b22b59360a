"""The chat server of ``rollout_throughput.py``, run in a child process so that its CPU is not the client's.

    python benchmarks/_bench_server.py --port 18431 --latency 0.1               # every reply is "7"
    python benchmarks/_bench_server.py --port 18431 --latency 0.1 --tool-turns 6

With ``--tool-turns T`` each conversation's first ``T - 1`` replies call ToolUse-v0's ``calculator`` once (a
native tool call) and the ``T``-th answers ``Answer: 4`` with no call, so every episode plays ``T`` turns.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aligngym.agents.server import ScriptedChatServer

#: What the tool-calling replies ask for, and what ToolUse's calculator answers (the bare loop sends it back).
TOOL_CALL = {"name": "calculator", "arguments": {"expression": "2+2"}}
TOOL_RESULT = "4"


def tool_responder(turns: int):
    """Replies that call the calculator on turns ``0 .. turns-2`` and answer on turn ``turns-1``."""

    def reply(messages: list[dict[str, Any]], body: dict[str, Any]) -> Any:
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn < turns - 1:
            return {"tool_calls": [{"id": f"call_{turn}", "function": dict(TOOL_CALL)}]}
        return f"Answer: {TOOL_RESULT}"

    return reply


def start(latency: float, port: int, tool_turns: int = 0) -> subprocess.Popen:
    """The server in a child process; returns once it answers."""
    argv = [sys.executable, str(Path(__file__)), "--port", str(port), "--latency", str(latency)]
    proc = subprocess.Popen(
        [*argv, "--tool-turns", str(tool_turns)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"benchmark server did not start on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--tool-turns", type=int, default=0, help="turns per tool episode (0: single-turn)")
    args = parser.parse_args()
    responder = tool_responder(args.tool_turns) if args.tool_turns > 0 else ["7"]
    server = ScriptedChatServer(responder, latency_s=args.latency, port=args.port)

    async def serve() -> None:
        async with server:
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
