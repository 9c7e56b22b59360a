"""Cost of grading: grades/s of docker against local, and the split grader against the harness it replaced.

Usage: ``python benchmarks/grading.py [--episodes 200] [--repeats 3] [--concurrency 1 8] [--latency --runs 40]``.

Throughput (the default): CodeExec-v0 episodes as a rollout plays them, one env per episode (made, reset,
one correct answer graded by the split grader, closed: the sandbox goes back to the shared pool, reset), C
worker tasks on one event loop. Per concurrency the backends run round-robin (``--repeats`` rounds, each
starting with another backend) and the table shows each backend's grades/s (median [min-max]) side by side
with docker's share of local's, paired round by round. Targets (issue 16): docker >= 50 % of local at C=8
and >= 30 grades/s.

Latency (``--latency``): one 10-test task of each form (MBPP ``tests``, ``cases``, HumanEval ``check`` with
10 asserts) with a correct solution, alternating the two graders run by run in the same sandbox so load
hits both alike: the median and p90 wall time per grade and the ratio. The baseline is the pre-split harness
read from git at ``--baseline`` (this needs a git checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from aligngym.feedback import unit_tests
from aligngym.sandboxes import make_sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_stats import interleave, paired, spread  # noqa: E402  (the benchmarks' shared helpers)

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "tests": (
        {
            "id": "add",
            "prompt": "add",
            "tests": [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(10)],
        },
        "def add(a, b):\n    return a + b\n",
    ),
    "cases": (
        {
            "id": "pair",
            "prompt": "pair",
            "entry_point": "pair",
            "cases": [{"input": [i], "output": [i, 2 * i]} for i in range(10)],
        },
        "def pair(x):\n    return [x, 2 * x]\n",
    ),
    "humaneval": (
        {
            "task_id": "HumanEval/x",
            "prompt": "def add(a: int, b: int) -> int:\n    '''a + b'''\n",
            "entry_point": "add",
            "test": "def check(candidate):\n"
            + "".join(f"    assert candidate({i}, {i + 1}) == {2 * i + 1}\n" for i in range(10)),
        },
        "    return a + b\n",
    ),
}
BACKENDS = {"local": ("local", {}), "oneshot": ("local", {"fork_server": False}), "docker": ("docker", {})}


def baseline_module(commit: str) -> ModuleType:
    """The pre-split ``unit_tests`` module at ``commit``, with its own harness program."""

    def show(path: str) -> str:
        argv = ["git", "-C", str(ROOT), "show", f"{commit}:{path}"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    folder = Path(tempfile.mkdtemp(prefix="aligngym-baseline-"))
    (folder / "_harness.py").write_text(show("feedback/_harness.py"))
    (folder / "baseline_unit_tests.py").write_text(show("feedback/unit_tests.py"))
    spec = importlib.util.spec_from_file_location("baseline_unit_tests", folder / "baseline_unit_tests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def grade_once(module: ModuleType, sandbox, form: str, isolated: bool) -> float:
    row, solution = TASKS[form]
    start = time.perf_counter()
    task = module.as_task(row)
    nonce = module.new_nonce()
    program, stdin = module.build_harness(solution, task, nonce=nonce)
    extra = {"isolated": True} if isolated else {}
    result = sandbox.run(program, language="python", stdin=stdin, timeout=20, **extra)
    verdict = module.grade(task, module.parse_report(result.stdout, nonce), result.status)
    elapsed = time.perf_counter() - start
    if not verdict.all_passed:
        raise RuntimeError(f"{form}: the correct solution did not pass: {verdict.feedback()} {result.stderr}")
    return elapsed


def answers() -> list[tuple[dict, str]]:
    """The shipped CodeExec tasks that have a reference solution, as (row, assistant message)."""
    lines = (ROOT / "envs/data/code_tasks.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [(row, f"```python\n{row['reference']}\n```") for row in rows if row.get("reference")]


async def episodes_per_s(backend: str, concurrency: int, episodes: int) -> float:
    """CodeExec-v0 grades/s: ``episodes`` one-answer episodes, one fresh env each, ``concurrency`` workers."""
    from aligngym.envs.code_exec import CodeExecEnv

    by_id = {row["id"]: text for row, text in answers()}
    rows = [row for row, _ in answers()]
    todo = iter(range(episodes))

    async def worker() -> None:
        for episode in todo:
            env = CodeExecEnv(rows, sandbox=backend, timeout=20)  # what a rollout does per episode
            try:
                _, info = await env.areset(seed=episode)
                _, reward, *_ = await env.astep(by_id[info["task_id"]])
            finally:
                await env.aclose()
            if reward != 1.0:
                raise RuntimeError(f"{backend} {info['task_id']}: the reference solution earned {reward}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return episodes / (time.perf_counter() - start)


def throughput(backends: list[str], levels: list[int], episodes: int, repeats: int) -> None:
    """Print grades/s per backend side by side at each concurrency, and docker's share of local's."""
    usable = []
    for name in backends:
        try:  # warm-up: the pool's first sandboxes (and, for docker, the image) before anything is timed
            asyncio.run(episodes_per_s(name, max(levels), max(levels)))
            usable.append(name)
        except Exception as exc:  # noqa: BLE001 - a missing backend is reported, not fatal
            print(f"{name}: skipped ({exc})", file=sys.stderr)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    table = Table(title=f"CodeExec-v0 grades/s, one env per episode, {episodes} episodes x {repeats} rounds")
    for column in ("C", *usable, "docker / local"):
        table.add_column(column)
    for level in levels:
        cases = {
            name: (lambda n=name, c=level: asyncio.run(episodes_per_s(n, c, episodes))) for name in usable
        }
        rates = interleave(cases, repeats)
        share = "-"
        if {"docker", "local"} <= rates.keys():
            share = (
                spread(paired(rates["docker"], rates["local"], lambda d, loc: 100 * d / loc), digits=0) + " %"
            )
        table.add_row(str(level), *(spread(rates[name], digits=1) for name in usable), share)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per grades/s figure")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--latency", action="store_true", help="also the split-vs-single-process table")
    parser.add_argument("--runs", type=int, default=40, help="latency: grades per grader, form and backend")
    parser.add_argument("--backends", nargs="+", default=["local", "docker"], choices=list(BACKENDS))
    parser.add_argument("--baseline", default="cc08f7f", help="git commit of the single-process harness")
    args = parser.parse_args()
    pooled = [b for b in args.backends if b in ("local", "docker")]
    if pooled:
        throughput(pooled, args.concurrency, args.episodes, args.repeats)
    if args.latency:
        latency(args.backends, args.runs, args.baseline)


def latency(backends: list[str], runs: int, baseline: str) -> None:
    """The split grader against the single-process harness at ``baseline``, per backend and task form."""
    old = baseline_module(baseline)
    table = Table(title=f"grading a 10-test task, {runs} runs each (ms: median / p90)")
    for column in ("backend", "form", f"single-process ({baseline})", "split grader", "ratio"):
        table.add_column(column)
    for name in backends:
        backend, options = BACKENDS[name]
        try:
            sandbox = make_sandbox(backend, timeout=20, **options)
            sandbox.run("pass")
        except Exception as exc:  # noqa: BLE001 - a missing backend is reported, not fatal
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        with sandbox:
            for form in TASKS:
                if form == "humaneval" and not hasattr(old, "assemble_solution"):
                    continue
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(3):  # warm-up
                    grade_once(old, sandbox, form, False)
                    grade_once(unit_tests, sandbox, form, True)
                for _ in range(runs):
                    times["old"].append(grade_once(old, sandbox, form, False))
                    times["new"].append(grade_once(unit_tests, sandbox, form, True))
                cells = []
                for key in ("old", "new"):
                    ordered = sorted(times[key])
                    p90 = ordered[int(0.9 * (len(ordered) - 1))]
                    cells.append(f"{statistics.median(ordered) * 1e3:.1f} / {p90 * 1e3:.1f}")
                ratio = statistics.median(times["new"]) / statistics.median(times["old"])
                table.add_row(name, form, *cells, f"{ratio:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
