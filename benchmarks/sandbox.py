"""Latency and throughput of sandboxed runs.

Usage: ``python benchmarks/sandbox.py --runs 200``. Prints p50/p99 latency of ``print(1)`` for bare
``python -c`` on the host (a subprocess), the local backend warm (fork server) and one-shot (a fresh bwrap
per run), and docker warm and cold when ``docker info`` works and the docker backend can start a sandbox;
then the throughput of trivial runs with ``--workers`` threads on the local backend, each thread with its
own sandbox and all sharing one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from aligngym.sandboxes import BACKENDS, Sandbox, bwrap_available, make_sandbox

CODE = "print(1)"


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p99 * 1e3


def timed(call: Callable[[], object], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def bare(runs: int) -> list[float]:
    """``python -c 'print(1)'`` as a plain host subprocess: the floor a fresh interpreter costs."""
    argv = [sys.executable, "-c", CODE]
    return timed(lambda: subprocess.run(argv, capture_output=True, check=True), runs)


def warm(sandbox: Sandbox, runs: int) -> list[float]:
    """Runs in one sandbox after a few warm-up runs (the first starts the fork server or container)."""

    def one() -> None:
        result = sandbox.run(CODE)
        if result.stdout != "1\n":
            raise RuntimeError(f"unexpected result: {result}")

    for _ in range(3):
        one()
    return timed(one, runs)


def cold(backend: str, runs: int) -> list[float]:
    """Create a sandbox, run once, close it."""

    def one() -> None:
        with make_sandbox(backend, timeout=30) as sandbox:
            sandbox.run(CODE)

    return timed(one, runs)


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


def docker_problem() -> str | None:
    """Why docker rows are skipped, or None when docker can run sandboxes here."""
    if "docker" not in BACKENDS:
        return "no docker backend in aligngym.sandboxes"
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "`docker info` fails (no daemon?)"
    try:
        with make_sandbox("docker", timeout=30) as sandbox:
            result = sandbox.run(CODE)
    except Exception as exc:
        return f"the docker backend cannot start a sandbox: {exc}"
    return None if result.ok else f"docker run failed: {result.status} {result.stderr[:200]}"


def main() -> None:
    """Measure every variant and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per latency and throughput figure")
    parser.add_argument("--workers", type=int, default=2, help="threads in the throughput figures")
    parser.add_argument(
        "--cold-runs", type=int, default=20, help="runs for docker cold (each starts a container)"
    )
    args = parser.parse_args()
    console = Console()
    notes: list[str] = []
    latency = Table(title=f"latency of {CODE!r} ({args.runs} runs)")
    for column in ("variant", "p50 ms", "p99 ms"):
        latency.add_column(column, justify="left" if column == "variant" else "right")

    def row(label: str, samples: list[float]) -> None:
        p50, p99 = percentiles(samples)
        latency.add_row(label, f"{p50:.1f}", f"{p99:.1f}")

    row("bare python -c (host subprocess)", bare(args.runs))
    if bwrap_available():
        with make_sandbox("local", timeout=30) as sandbox:
            row("local warm (fork server)", warm(sandbox, args.runs))
        with make_sandbox("local", timeout=30, fork_server=False) as sandbox:
            row("local one-shot (fresh bwrap per run)", warm(sandbox, args.runs))
    else:
        notes.append("local bwrap rows skipped: bubblewrap is not usable here")
    problem = docker_problem()
    if problem is None:
        with make_sandbox("docker", timeout=30) as sandbox:
            row("docker warm", warm(sandbox, args.runs))
        row(f"docker cold ({args.cold_runs} runs)", cold("docker", args.cold_runs))
    else:
        notes.append(f"docker rows skipped: {problem}")
    console.print(latency)
    rates = Table(title=f"throughput of trivial runs, {args.workers} worker threads")
    rates.add_column("variant")
    rates.add_column("runs/s", justify="right")
    if bwrap_available():
        for shared in (False, True):
            label = "one shared sandbox" if shared else "a sandbox per worker"
            rates.add_row(f"local warm, {label}", f"{throughput(args.workers, args.runs, shared):.0f}")
        oneshot = throughput(args.workers, max(20, args.runs // 4), False, fork_server=False)
        rates.add_row("local one-shot, a sandbox per worker", f"{oneshot:.0f}")
    console.print(rates)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


if __name__ == "__main__":
    main()
