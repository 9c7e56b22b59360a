"""The local sandbox's warm path against its floors: ``print(1)`` latency and CodeExec-v0 grades per second.

Usage: ``python benchmarks/local_sandbox.py [--runs 300] [--episodes 400] [--repeats 3] [--tree DIR]``.
``--tree DIR`` imports ``aligngym.sandboxes`` and ``aligngym.feedback`` from ``DIR/sandboxes`` and
``DIR/feedback`` (a copy of another version, e.g. ``git archive HEAD sandboxes feedback | tar -x -C DIR``)
for A/B runs: run it alternately with and without ``--tree`` and compare.

Latency (p50 / p90 ms, ``--runs`` each, the variants interleaved run by run so load hits them alike):

* floors: ``fork`` + ``_exit`` of this process (waited for), ``/bin/true`` as a host subprocess, ``bwrap
  true`` (a fresh bwrap with the sandbox's own namespaces and view) and ``python -I -S -c pass``;
* the local backend's warm path: ``await sandbox.arun("print(1)")`` on a warm fork server, the same run
  ``isolated`` (how graders run), and the blocking ``sandbox.run``.

Throughput: CodeExec-v0 episodes (reset, one correct answer graded by the split grader, the sandbox given
back to the pool and reset) with C worker tasks on one event loop, one env per worker, at C=1 and C=8,
``--repeats`` times each (interleaved), as median and spread of grades/s. Each grade checks that the correct
answer earned the full reward.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = "print(1)"


def use_tree(tree: str) -> None:
    """Import ``aligngym.sandboxes`` and ``aligngym.feedback`` (and their modules) from ``tree`` instead."""
    import importlib.abc
    import importlib.machinery
    import importlib.util

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
            for package in ("sandboxes", "feedback"):
                folder = os.path.join(tree, package)
                if name == f"aligngym.{package}":
                    init = os.path.join(folder, "__init__.py")
                    return importlib.util.spec_from_file_location(
                        name, init, submodule_search_locations=[folder]
                    )
                if name.startswith(f"aligngym.{package}.") and name.count(".") == 2:
                    return importlib.machinery.PathFinder.find_spec(name, [folder])
            return None

    sys.meta_path.insert(0, Finder())


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3


def fork_exit() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def bwrap_true_argv() -> list[str]:
    """``bwrap true`` with the sandbox's namespaces and read-only view (what a one-shot run starts with)."""
    from aligngym.sandboxes import bwrap

    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    argv += [*bwrap.host_view().top, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--"]
    return [*argv, "/bin/true"]


def subprocess_call(argv: list[str]) -> Callable[[], None]:
    return lambda: subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)


async def latency(runs: int) -> dict[str, list[float]]:
    """Per variant, ``runs`` wall times (seconds), the variants interleaved."""
    from aligngym.sandboxes import make_sandbox

    sandbox = make_sandbox("local", timeout=30)
    loop = asyncio.get_running_loop()

    async def warm() -> None:
        result = await sandbox.arun(CODE)
        assert result.stdout == "1\n", result

    async def warm_isolated() -> None:
        result = await sandbox.arun(CODE, isolated=True)
        assert result.stdout == "1\n", result

    def blocking() -> None:
        assert sandbox.run(CODE).stdout == "1\n"

    def sync(call: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def wrapped() -> None:
            call()

        return wrapped

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "floor: fork + exit (this process)": sync(fork_exit),
        "floor: /bin/true subprocess": sync(subprocess_call(["/bin/true"])),
        "floor: bwrap true": sync(subprocess_call(bwrap_true_argv())),
        "baseline: python -I -S -c pass": sync(subprocess_call([sys.executable, "-I", "-S", "-c", "pass"])),
        "local warm: await arun('print(1)')": warm,
        "local warm: arun isolated": warm_isolated,
        "local warm: blocking run() in a thread": lambda: loop.run_in_executor(None, blocking),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(5):
            for call in variants.values():
                await call()
        for _ in range(runs):
            for name, call in variants.items():
                start = time.perf_counter()
                await call()
                samples[name].append(time.perf_counter() - start)
    finally:
        sandbox.close()
    return samples


def answers() -> list[tuple[dict, str]]:
    """The shipped tasks with their reference solutions, as (row, assistant message)."""
    rows = [
        json.loads(line) for line in (ROOT / "envs/data/code_tasks.jsonl").read_text().splitlines() if line
    ]
    return [(row, f"```python\n{row['reference']}\n```") for row in rows if row.get("reference")]


async def grading_rate(concurrency: int, episodes: int) -> float:
    """CodeExec-v0 episodes per second with ``concurrency`` worker tasks (one env each)."""
    from aligngym.envs.registry import make

    pairs = answers()
    by_id = {row["id"]: text for row, text in pairs}
    envs = [make("aligngym/CodeExec-v0") for _ in range(concurrency)]
    todo = iter(range(episodes))

    async def worker(env) -> None:
        env = env.unwrapped
        for episode in todo:
            _, info = await env.areset(seed=episode)
            _, reward, *_ = await env.astep(by_id[info["task_id"]])
            if reward != 1.0:
                raise RuntimeError(f"{info['task_id']}: the reference solution earned {reward}")

    await asyncio.gather(*(worker(env) for env in envs[:1]))  # warm: the pool's first sandbox
    todo = iter(range(episodes))
    start = time.perf_counter()
    await asyncio.gather(*(worker(env) for env in envs))
    rate = episodes / (time.perf_counter() - start)
    for env in envs:
        await env.unwrapped.aclose()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="print(1) runs per latency variant")
    parser.add_argument("--episodes", type=int, default=400, help="episodes per grades/s figure")
    parser.add_argument("--repeats", type=int, default=3, help="grades/s figures per concurrency")
    parser.add_argument("--tree", help="import aligngym.sandboxes and aligngym.feedback from this folder")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-grading", action="store_true")
    args = parser.parse_args()
    if args.tree:
        use_tree(os.path.abspath(args.tree))
    print(f"tree: {args.tree or ROOT}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    if not args.skip_latency:
        samples = asyncio.run(latency(args.runs))
        print(f"\nlatency, {args.runs} runs each, interleaved (ms)")
        print(f"{'variant':45} {'p50':>7} {'p90':>7}")
        for name, times in samples.items():
            print(f"{name:45} {pct(times, 0.5):7.2f} {pct(times, 0.9):7.2f}")
    if not args.skip_grading:
        rates: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(args.repeats):
            for concurrency in rates:
                rates[concurrency].append(asyncio.run(grading_rate(concurrency, args.episodes)))
        print(f"\nCodeExec-v0 grades/s ({args.episodes} episodes, {args.repeats} repeats, interleaved)")
        for concurrency, values in rates.items():
            spread = f"{min(values):.0f}-{max(values):.0f}"
            print(f"C={concurrency}: median {statistics.median(values):6.1f}   spread {spread}")


if __name__ == "__main__":
    main()
