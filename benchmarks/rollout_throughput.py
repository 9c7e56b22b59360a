"""Rollout throughput and client CPU against a local OpenAI-protocol server with a fixed artificial latency.

    python benchmarks/rollout_throughput.py                      # C=64 and 256, ToolUse at C=64, peers
    python benchmarks/rollout_throughput.py --no-verifiers --no-ray --repeats 5
    python benchmarks/rollout_throughput.py --quick              # smoke run (seconds): not a measurement

The server runs in its own process (``_bench_server.py``; its CPU is not ours) and answers every request
after ``--latency`` seconds. CPU is this process's (``time.process_time``) per episode. Cases:

* single-turn ``aligngym/Arithmetic-v0`` at each ``--concurrency`` C, ``--episodes`` episodes (20 x C);
* multi-turn ``aligngym/ToolUse-v0`` at ``--tool-concurrency``: the server calls ToolUse's calculator
  (native tool calls) on every turn but the last, so every episode plays ``--tool-turns`` turns.

Systems, run round-robin ``--repeats`` times (median [min-max] printed):

* ``bare (C workers)``: the fair baseline -- plain ``openai.AsyncOpenAI`` calls from C worker tasks, each
  taking the next episode from a shared counter; same messages, tools and sampling fields as aligngym's
  agent, no env and no rows (``_bare_loops.py``);
* ``bare (gather+sem, old)``: the baseline this benchmark shipped before: all N episodes created at once and
  gathered under a semaphore of C. It spends more CPU than the workers, so it flattered aligngym;
* ``aligngym``: ``aligngym.rollout`` with the OpenAI-protocol agent, in-process, writing its JSONL rows.

Then once each (single-turn only): ``aligngym-ray`` (``_ray_bench.py``: ``rollout_ray`` on ``--workers``
actors, CPU of the whole process tree, start-up cancelled out) and ``verifiers`` (its own eval runner in its
own venv, ``_verifiers_bench.py``). PASS/FAIL lines give the client-cost targets: aligngym's CPU per
single-turn episode <= 1.15x the bare workers' at each C, and <= 0.3 ms of extra CPU per ToolUse turn
(medians of per-round paired figures). Ideal throughput is C / latency episodes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aligngym
from aligngym.agents.openai_agent import OpenAIAgent

sys.path.insert(0, str(Path(__file__).parent))
import _bare_loops  # noqa: E402
import _bench_server  # noqa: E402
import _ray_bench  # noqa: E402
import _verifiers_bench  # noqa: E402
from _bench_stats import interleave, paired, spread, verdict  # noqa: E402

Result = _bare_loops.Result
SINGLE_ENV = "aligngym/Arithmetic-v0"
TOOL_ENV = "aligngym/ToolUse-v0"
BARE, OLD, OURS = "bare (C workers)", "bare (gather+sem, old)", "aligngym"


async def measure_aligngym(
    base_url: str, env_id: str, env_kwargs: dict[str, Any], episodes: int, concurrency: int, turns: int = 1
) -> Result:
    """Episodes/s, CPU seconds per episode of this process and errors of one ``aligngym.rollout`` run."""
    agent = OpenAIAgent(model=_bare_loops.MODEL, base_url=base_url, max_retries=0)
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = await aligngym.rollout(
            env_id,
            agent,
            episodes=episodes,
            out=os.path.join(tmp, "r.jsonl"),
            concurrency=concurrency,
            env_kwargs=env_kwargs,
            progress=False,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await agent.aclose()
    if not summary.errors and summary.turns != turns * summary.written:
        # Like for like: the bare loop plays exactly `turns` per episode.
        raise RuntimeError(f"{env_id}: {summary.turns} turns in {summary.written} episodes, not {turns} each")
    return summary.written / wall, cpu / max(summary.written, 1), summary.errors


def systems(
    base_url: str, env_id: str, env_kwargs: dict[str, Any], n: int, k: int, turns: int
) -> dict[str, Callable[[], Result]]:
    """The interleaved systems of one case, each a call that runs it once on ``n`` episodes at ``k``."""
    prompts, tools = _bare_loops.first_messages(env_id, env_kwargs, min(n, 256))
    play = _bare_loops.tool_turns(prompts, tools, turns) if turns > 1 else _bare_loops.single_turn(prompts)
    return {
        BARE: lambda: asyncio.run(_bare_loops.workers(base_url, n, k, play)),
        OLD: lambda: asyncio.run(_bare_loops.gather_semaphore(base_url, n, k, play)),
        OURS: lambda: asyncio.run(measure_aligngym(base_url, env_id, env_kwargs, n, k, turns)),
    }


def print_table(title: str, rows: dict[str, list[Result]], ideal: float, n: int) -> None:
    """One case's table: each figure the median [min-max] over its runs."""
    print(f"\n{title}")
    print(f"{'system':<24} {'episodes':>8}  {'episodes/s':<22} {'% ideal':<20} {'CPU ms/ep':<20} errors")
    for name, runs in rows.items():
        rates, cpus = [r[0] for r in runs], [r[1] for r in runs]
        errors = sum(r[2] for r in runs)
        print(
            f"{name:<24} {n:>8}  {spread(rates, digits=1):<22} {spread(rates, 100 / ideal, 1):<20} "
            f"{spread(cpus, 1000):<20} {errors}"
        )


def cpu_ratios(rows: dict[str, list[Result]], ours: str, base: str) -> list[float]:
    """Per-round CPU per episode of ``ours`` over ``base``."""
    return paired([r[1] for r in rows[ours]], [r[1] for r in rows[base]], lambda a, b: a / b)


def single_turn_case(args: argparse.Namespace, base_url: str, k: int, peers: dict[str, Any]) -> None:
    """Bare workers, the old bare loop and aligngym at concurrency ``k``; peers once; the CPU verdict."""
    n = args.episodes or 20 * k
    for run in systems(base_url, SINGLE_ENV, {}, min(n, 2 * k), k, 1).values():
        run()  # warm-up: imports and first-call paths, untimed
    rows = interleave(systems(base_url, SINGLE_ENV, {}, n, k, 1), args.repeats)
    if peers.get("ray"):
        rows["aligngym-ray (1 run)"] = [
            _ray_bench.measure_ray(base_url, n, k, args.workers, peers["server_pid"])
        ]
    if peers.get("verifiers"):
        got = _verifiers_bench.run_worker(peers["verifiers"], base_url, n, k)
        if got is not None:
            rows["verifiers (1 run)"] = [(got["episodes_per_s"], got["cpu_s_per_episode"], got["errors"])]
    title = f"single-turn {SINGLE_ENV}, C={k}, {args.repeats} round(s), latency {args.latency * 1000:.0f} ms"
    print_table(title, rows, k / args.latency, n)
    old = cpu_ratios(rows, OURS, OLD)
    rate = paired([r[0] for r in rows[OURS]], [r[0] for r in rows[BARE]], lambda a, b: a / b)
    print(f"info C={k}: aligngym episodes/s / bare (C workers): {spread(rate, 100, 1)} %")
    print(f"info C={k}: aligngym CPU/ep / bare (gather+sem, old): {spread(old)}x (the old, flattering ratio)")
    print(
        verdict(
            f"C={k} client CPU per episode, aligngym / bare (C workers)",
            cpu_ratios(rows, OURS, BARE),
            1.15,
            "x",
        )
    )


def tool_case(args: argparse.Namespace, port: int) -> None:
    """Multi-turn ToolUse: bare workers, the old bare loop and aligngym; the extra-CPU-per-turn verdict."""
    k, turns = args.tool_concurrency, args.tool_turns
    n = args.tool_episodes or 10 * k
    proc = _bench_server.start(args.latency, port, tool_turns=turns)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        env_kwargs = {"max_turns": turns}
        for run in systems(base_url, TOOL_ENV, env_kwargs, min(n, k), k, turns).values():
            run()  # warm-up
        rows = interleave(systems(base_url, TOOL_ENV, env_kwargs, n, k, turns), args.repeats)
    finally:
        proc.terminate()
        proc.wait()
    title = (
        f"multi-turn {TOOL_ENV}, {turns} turns/episode ({turns - 1} calculator calls), C={k}, "
        f"{args.repeats} round(s)"
    )
    print_table(title, rows, k / (args.latency * turns), n)
    cpu = {name: [r[1] for r in runs] for name, runs in rows.items()}
    extra = paired(cpu[OURS], cpu[BARE], lambda a, b: (a - b) * 1000 / turns)
    extra_old = paired(cpu[OURS], cpu[OLD], lambda a, b: (a - b) * 1000 / turns)
    print(f"info ToolUse: extra CPU per turn over bare (gather+sem, old): {spread(extra_old, digits=3)} ms")
    print(verdict(f"ToolUse extra client CPU per turn over bare (C workers), C={k}", extra, 0.3, " ms", 3))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256], help="single-turn C values")
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request (s)")
    parser.add_argument(
        "--episodes", type=int, default=0, help="single-turn episodes per run (default 20 x C)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every system")
    parser.add_argument("--tool-concurrency", type=int, default=64, help="C of the ToolUse case")
    parser.add_argument("--tool-turns", type=int, default=6, help="turns per ToolUse episode (0: skip it)")
    parser.add_argument("--tool-episodes", type=int, default=0, help="ToolUse episodes per run (10 x C)")
    parser.add_argument("--port", type=int, default=18431, help="the server's port (the ToolUse one: +1)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors for the aligngym-ray row")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    parser.add_argument("--no-verifiers", action="store_true", help="skip the verifiers row (and its venv)")
    parser.add_argument("--verifiers-venv", type=Path, default=_verifiers_bench.DEFAULT_VENV)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every case: figures mean nothing"
    )
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.episodes, args.repeats, args.latency = [8], 32, 1, 0.01
        args.tool_concurrency, args.tool_episodes, args.tool_turns = 8, 16, 3
        args.no_ray = args.no_verifiers = True
    return args


def main() -> None:
    args = parse_args()
    peers: dict[str, Any] = {}
    if not args.no_verifiers:
        peers["verifiers"], note = _verifiers_bench.ensure_venv(args.verifiers_venv)
        print(note)
    if not args.no_ray:
        problem = _ray_bench.start_ray()  # before any timing
        peers["ray"] = problem is None
        if problem:
            print(f"Ray unavailable ({problem}); skipping the Ray row")
    print(
        f"{'QUICK smoke run (figures mean nothing); ' if args.quick else ''}server latency "
        f"{args.latency * 1000:.0f} ms; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    )
    proc = _bench_server.start(args.latency, args.port)
    peers["server_pid"] = proc.pid
    try:
        base_url = f"http://127.0.0.1:{args.port}/v1"
        for k in args.concurrency:
            single_turn_case(args, base_url, k, peers)
    finally:
        proc.terminate()
        proc.wait()
        if peers.get("ray"):
            _ray_bench.stop_ray()
    if args.tool_turns > 1:
        tool_case(args, args.port + 1)


if __name__ == "__main__":
    main()
