"""Rollout throughput against a local OpenAI-protocol server with a fixed artificial latency.

    python benchmarks/rollout_throughput.py --concurrency 64 --latency 0.1 --episodes 1280

The server runs in its own process (so its CPU is not ours), answers every request after ``--latency``
seconds, and the rollout plays single-turn ``aligngym/Arithmetic-v0`` episodes with the OpenAI-protocol
agent. Ideal throughput is ``concurrency / latency`` episodes per second (every slot always waiting on the
server); the figure that matters is the percentage of it reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import aligngym
from aligngym.agents.openai_agent import OpenAIAgent


def start_server(latency: float, port: int) -> subprocess.Popen:
    """The scripted server in a child process; returns once it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aligngym.agents.server",
            "--port",
            str(port),
            "--latency",
            str(latency),
            "--reply",
            "7",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("benchmark server did not start")


async def measure(base_url: str, episodes: int, concurrency: int) -> tuple[float, float, int]:
    """Episodes/s, CPU seconds per episode of this process, and errors."""
    agent = OpenAIAgent(model="scripted", base_url=base_url, max_retries=0)
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = await aligngym.rollout(
            "aligngym/Arithmetic-v0",
            agent,
            episodes=episodes,
            out=os.path.join(tmp, "r.jsonl"),
            concurrency=concurrency,
            progress=False,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await agent.aclose()
    return summary.written / wall, cpu / max(summary.written, 1), summary.errors


async def measure_bare(base_url: str, episodes: int, concurrency: int) -> float:
    """Episodes/s of a bare loop of ``AsyncOpenAI`` calls under a semaphore: the ceiling with no framework."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": f"{i % 10}+1="}]
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(episodes)))
    rate = episodes / (time.perf_counter() - start)
    await client.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64], help="concurrent episodes")
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request (s)")
    parser.add_argument("--episodes", type=int, default=0, help="episodes per run (default 20 x concurrency)")
    parser.add_argument("--port", type=int, default=18431)
    args = parser.parse_args()
    proc = start_server(args.latency, args.port)
    try:
        base_url = f"http://127.0.0.1:{args.port}/v1"
        asyncio.run(measure(base_url, 32, 8))  # warm-up: imports, connections
        print(f"server latency {args.latency * 1000:.0f} ms, single-turn episodes, OpenAI-protocol agent")
        print(
            f"{'concurrency':>11} {'episodes':>9} {'episodes/s':>11} {'ideal':>7} {'% ideal':>8} "
            f"{'CPU ms/ep':>10} {'errors':>7} {'bare loop/s':>12} {'vs bare':>8}"
        )
        for k in args.concurrency:
            n = args.episodes or 20 * k
            bare = asyncio.run(measure_bare(base_url, n, k))
            rate, cpu, errors = asyncio.run(measure(base_url, n, k))
            ideal = k / args.latency
            print(
                f"{k:>11} {n:>9} {rate:>11.1f} {ideal:>7.0f} {100 * rate / ideal:>7.1f}% "
                f"{cpu * 1000:>10.2f} {errors:>7} {bare:>12.1f} {100 * rate / bare:>7.1f}%"
            )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
