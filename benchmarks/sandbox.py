"""Latency of sandboxed runs next to a fresh interpreter and the floors, and throughput of trivial runs.

    python benchmarks/sandbox.py --runs 200
    python benchmarks/sandbox.py --quick            # smoke run (seconds): not a measurement

Latency of ``print(1)`` (p50/p90/p99, ms) for, side by side:

* floors: ``fork`` + ``_exit`` from this process, a minimal ``bwrap ... true`` (new namespaces, no
  interpreter), and ``docker exec CONTAINER true`` in a sandbox's own container;
* baselines: ``python -I -S -c`` (no site start-up: what a sandboxed interpreter has to do at least) and
  ``python -c`` (the venv's site start-up, which the benchmark used to compare against);
* aligngym: the local backend warm (fork server) and one-shot (a fresh bwrap per run), docker warm and cold.

Docker rows need ``docker info`` to work and the docker backend to start a sandbox (``--quick`` only uses an
image that is already built). Variants run round-robin in ``--rounds`` rounds; the spread column is the
range of the per-round p50s. Then runs/s of trivial runs from ``--workers`` threads on the local backend.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aligngym.sandboxes import BACKENDS, Sandbox, bwrap_available, make_sandbox

sys.path.insert(0, str(Path(__file__).parent))
from _bench_stats import interleave, spread, verdict  # noqa: E402

CODE = "print(1)"
#: The floor of an isolated process: bwrap's namespaces and a read-only root, running /bin/true.
BWRAP_TRUE = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]
IMAGE = "aligngym-sandbox:latest"


def timed(call: Callable[[], object], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def fork_exit() -> None:
    """A child that exits at once, reaped: the least a new process costs."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def command(argv: list[str]) -> Callable[[], object]:
    """A host subprocess of ``argv`` that must succeed."""
    return lambda: subprocess.run(argv, capture_output=True, check=True)


def sandbox_run(sandbox: Sandbox) -> Callable[[], object]:
    """``print(1)`` in ``sandbox``, checked."""

    def one() -> None:
        result = sandbox.run(CODE)
        if result.stdout != "1\n":
            raise RuntimeError(f"unexpected result: {result}")

    for _ in range(3):  # warm-up: the first run starts the fork server or container
        one()
    return one


def cold(backend: str) -> Callable[[], object]:
    """Create a sandbox, run once, close it."""

    def one() -> None:
        with make_sandbox(backend, timeout=30) as sandbox:
            sandbox.run(CODE)

    return one


def docker_problem(quick: bool) -> str | None:
    """Why docker rows are skipped, or None when docker can run sandboxes here."""
    if "docker" not in BACKENDS:
        return "no docker backend in aligngym.sandboxes"
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "`docker info` fails (no daemon?)"
    if quick and subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return f"--quick does not build {IMAGE}"
    try:
        with make_sandbox("docker", timeout=30) as sandbox:
            result = sandbox.run(CODE)
    except Exception as exc:
        return f"the docker backend cannot start a sandbox: {exc}"
    return None if result.ok else f"docker run failed: {result.status} {result.stderr[:200]}"


def latency_table(args: argparse.Namespace, notes: list[str]) -> tuple[Table, dict[str, list[list[float]]]]:
    """Every variant's latency measured round-robin (sandboxes stay open across the rounds): the table, and
    each variant's samples by round."""
    variants: dict[str, Callable[[], object]] = {
        "floor: fork + exit": fork_exit,
        "baseline: python -I -S -c": command([sys.executable, "-I", "-S", "-c", CODE]),
        "baseline (old): python -c, site start-up": command([sys.executable, "-c", CODE]),
    }
    opened: list[Sandbox] = []
    if bwrap_available():
        variants["floor: bwrap true"] = command(BWRAP_TRUE)
        opened.append(make_sandbox("local", timeout=30))
        variants["aligngym local warm (fork server)"] = sandbox_run(opened[-1])
        opened.append(make_sandbox("local", timeout=30, fork_server=False))
        variants["aligngym local one-shot (fresh bwrap)"] = sandbox_run(opened[-1])
    else:
        notes.append("bwrap rows skipped: bubblewrap is not usable here")
    problem = None if args.no_docker else docker_problem(args.quick)
    if problem is None and not args.no_docker:
        opened.append(make_sandbox("docker", timeout=30))
        cid = getattr(opened[-1], "container_id", "")
        if cid:
            variants["floor: docker exec true"] = command(["docker", "exec", cid, "true"])
        variants["aligngym docker warm"] = sandbox_run(opened[-1])
    else:
        notes.append(f"docker rows skipped: {problem or '--no-docker'}")
    per_round = max(1, args.runs // args.rounds)
    try:
        rounds = interleave({k: (lambda v=v: timed(v, per_round)) for k, v in variants.items()}, args.rounds)
        if problem is None and not args.no_docker:
            cold_runs = max(1, args.cold_runs // args.rounds)
            rounds["aligngym docker cold"] = [timed(cold("docker"), cold_runs) for _ in range(args.rounds)]
    finally:
        for sandbox in opened:
            sandbox.close()
    table = Table(title=f"latency of {CODE!r}: {args.rounds} rounds x {per_round} runs, ms")
    for column in ("variant", "p50", "p90", "p99", "p50 per round [min-max]"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for label in sorted(rounds, key=_order):
        samples = sorted(s for r in rounds[label] for s in r)
        p50, p90, p99 = (_quantile(samples, q) * 1e3 for q in (0.5, 0.9, 0.99))
        per = spread([statistics.median(r) for r in rounds[label]], 1e3)
        table.add_row(label, f"{p50:.1f}", f"{p90:.1f}", f"{p99:.1f}", per)
    return table, rounds


def _order(label: str) -> tuple[int, str]:
    return (["floor", "baseline", "aligngym"].index(label.split(":")[0].split(" ")[0]), label)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def throughput(workers: int, runs: int, shared: bool, **config: object) -> float:
    """Trivial runs per second with ``workers`` threads (one sandbox each, or one ``shared``)."""
    sandboxes = [make_sandbox("local", timeout=30, **config) for _ in range(1 if shared else workers)]
    try:
        for sandbox in sandboxes:
            sandbox.run("pass")
        per_worker = max(1, runs // workers)

        def work(i: int) -> None:
            sandbox = sandboxes[i % len(sandboxes)]
            for _ in range(per_worker):
                if not sandbox.run(CODE).ok:
                    raise RuntimeError("a trivial run failed")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return per_worker * workers / (time.perf_counter() - start)
    finally:
        for sandbox in sandboxes:
            sandbox.close()


def main() -> None:
    """Measure every variant and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per latency and throughput figure")
    parser.add_argument("--rounds", type=int, default=4, help="round-robin rounds the runs are split into")
    parser.add_argument("--workers", type=int, default=2, help="threads in the throughput figures")
    parser.add_argument(
        "--cold-runs", type=int, default=20, help="runs of docker cold (each a new container)"
    )
    parser.add_argument("--no-docker", action="store_true", help="skip the docker rows")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds, args.cold_runs = 8, 2, 2
    console = Console(width=120)
    notes: list[str] = ["QUICK smoke run: figures mean nothing"] if args.quick else []
    table, rounds = latency_table(args, notes)
    console.print(table)
    warm = rounds.get("aligngym local warm (fork server)")
    if warm:
        p50s = [statistics.median(r) * 1e3 for r in warm]
        console.print(
            verdict("local warm p50 of print(1), median of rounds", p50s, 5.0, " ms", 1), markup=False
        )
    rates = Table(title=f"throughput of trivial runs, {args.workers} worker threads")
    rates.add_column("variant")
    rates.add_column("runs/s", justify="right")
    if bwrap_available():
        for shared in (False, True):
            label = "one shared sandbox" if shared else "a sandbox per worker"
            rates.add_row(f"local warm, {label}", f"{throughput(args.workers, args.runs, shared):.0f}")
        oneshot = throughput(args.workers, max(4, args.runs // 4), False, fork_server=False)
        rates.add_row("local one-shot, a sandbox per worker", f"{oneshot:.0f}")
    console.print(rates)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


if __name__ == "__main__":
    main()
