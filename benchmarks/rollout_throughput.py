"""Rollout throughput against a local OpenAI-protocol server with a fixed artificial latency.

    python benchmarks/rollout_throughput.py                      # 64 concurrent, 100 ms, all four columns
    python benchmarks/rollout_throughput.py --concurrency 64 256 --no-verifiers --no-ray

The server runs in its own process (so its CPU is not ours) and answers every request after ``--latency``
seconds. One run measures, for the same single-turn arithmetic workload at each concurrency C:

* ``bare``: a loop of ``openai.AsyncOpenAI`` chat calls under a semaphore of C, no framework (the ceiling);
* ``aligngym``: ``aligngym.rollout`` of ``aligngym/Arithmetic-v0`` with the OpenAI-protocol agent, in-process;
* ``aligngym-ray``: ``aligngym.distributed.rollout_ray`` on ``--workers`` Ray actors with ``C // workers``
  episodes in flight per actor (so C in flight in total). Ray is initialised before timing, and the figures
  are the difference between a run of N + W episodes and a run of W (W = 2C), so Ray's and the actors'
  start-up cancel out; CPU is the driver's plus every process Ray started (actors, raylet, GCS);
* ``verifiers``: verifiers' own eval runner (``verifiers.v1``, single-agent env, in-process harness,
  ``max_concurrent=C``) in its own venv, see ``_verifiers_bench.py`` and ``_verifiers_worker.py``.

Ideal throughput is ``C / latency`` episodes per second (every slot always waiting on the server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aligngym
from aligngym.agents.openai_agent import OpenAIAgent

sys.path.insert(0, str(Path(__file__).parent))
import _verifiers_bench  # noqa: E402


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


async def measure_bare(base_url: str, episodes: int, concurrency: int) -> tuple[float, float, int]:
    """A bare loop of ``AsyncOpenAI`` calls under a semaphore (the ceiling with no framework), as ``measure``."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": f"{i % 10}+1="}]
            )

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(episodes)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await client.close()
    return episodes / wall, cpu / episodes, 0


class TreeCPU:
    """CPU seconds used by this process and its descendants (Ray's daemons and actors), less ``exclude``.

    Polled from a thread, since ``rollout_ray`` kills its actors at the end of a run (their last ~50 ms of
    CPU may be missed); a process first seen during the run counts from zero.
    """

    def __init__(self, exclude: int):
        import psutil

        self._me, self._exclude, self._seen = psutil.Process(), exclude, {}
        self._stop = threading.Event()
        self.base = self._poll()

    def _poll(self) -> dict[int, float]:
        for proc in [self._me, *self._me.children(recursive=True)]:
            if proc.pid == self._exclude:
                continue
            try:
                t = proc.cpu_times()
                self._seen[proc.pid] = t.user + t.system
            except Exception:  # gone between listing and reading
                pass
        return dict(self._seen)

    def __enter__(self) -> TreeCPU:
        def loop() -> None:
            while not self._stop.wait(0.05):
                self._poll()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.used = sum(v - self.base.get(pid, 0.0) for pid, v in self._seen.items())


async def _ray_once(base_url: str, episodes: int, per_worker: int, workers: int) -> tuple[float, int, int]:
    from aligngym.distributed import rollout_ray

    spec = {"model": "scripted", "base_url": base_url, "max_retries": 0}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = await rollout_ray(
            "aligngym/Arithmetic-v0",
            spec,
            episodes=episodes,
            out=os.path.join(tmp, "r.jsonl"),
            workers=workers,
            concurrency=per_worker,
            progress=False,
        )
    return time.perf_counter() - t0, summary.written, summary.errors


def measure_ray(base_url: str, episodes: int, concurrency: int, workers: int, server_pid: int):
    """Steady-state episodes/s and CPU s per episode on Ray: (run of N + W) minus (run of W), W = 2C."""
    per_worker = max(1, concurrency // workers)
    warm = 2 * concurrency
    runs = []
    for n in (warm, episodes + warm):
        with TreeCPU(exclude=server_pid) as cpu:
            wall, written, errors = asyncio.run(_ray_once(base_url, n, per_worker, workers))
        runs.append((wall, cpu.used, written, errors))
    (w1, c1, n1, _), (w2, c2, n2, errors) = runs
    return (n2 - n1) / max(w2 - w1, 1e-9), (c2 - c1) / max(n2 - n1, 1), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64], help="concurrent episodes")
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request (s)")
    parser.add_argument("--episodes", type=int, default=0, help="episodes per run (default 20 x concurrency)")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors for the aligngym-ray column")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray column")
    parser.add_argument(
        "--no-verifiers", action="store_true", help="skip the verifiers column (and its venv)"
    )
    parser.add_argument("--verifiers-venv", type=Path, default=_verifiers_bench.DEFAULT_VENV)
    args = parser.parse_args()

    vf_python = None
    if not args.no_verifiers:
        vf_python, note = _verifiers_bench.ensure_venv(args.verifiers_venv)
        print(note)
    use_ray = not args.no_ray
    if use_ray:
        try:
            import ray

            ray.init(address="local", include_dashboard=False, log_to_driver=False)  # before any timing
        except Exception as exc:  # not installed, or cannot start
            print(f"Ray unavailable ({type(exc).__name__}: {exc}); skipping the Ray column")
            use_ray = False
    proc = start_server(args.latency, args.port)
    try:
        base_url = f"http://127.0.0.1:{args.port}/v1"
        asyncio.run(measure(base_url, 32, 8))  # warm-up: imports, connections
        print(
            f"server latency {args.latency * 1000:.0f} ms, single-turn arithmetic episodes; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
        )
        if use_ray:
            print(
                f"aligngym-ray: {args.workers} actors x C//{args.workers} in flight each; Ray start-up "
                "excluded (ray.init before timing; (N+W)-(W) episode runs, W = 2C)"
            )
        print(
            f"{'C':>4} {'system':<13} {'episodes':>9} {'episodes/s':>11} {'% ideal':>8} {'CPU ms/ep':>10} "
            f"{'errors':>7}"
        )
        for k in args.concurrency:
            n = args.episodes or 20 * k
            ideal = k / args.latency
            rows: dict[str, tuple[float, float, int]] = {}
            rows["bare"] = asyncio.run(measure_bare(base_url, n, k))
            rows["aligngym"] = asyncio.run(measure(base_url, n, k))
            if use_ray:
                rows["aligngym-ray"] = measure_ray(base_url, n, k, args.workers, proc.pid)
            if vf_python is not None:
                got = _verifiers_bench.run_worker(vf_python, base_url, n, k)
                if got is not None:
                    rows["verifiers"] = (got["episodes_per_s"], got["cpu_s_per_episode"], got["errors"])
            for name, (rate, cpu, errors) in rows.items():
                print(
                    f"{k:>4} {name:<13} {n:>9} {rate:>11.1f} {100 * rate / ideal:>7.1f}% "
                    f"{cpu * 1000:>10.2f} {errors:>7}"
                )
            ours = rows["aligngym"][0]
            ratios = [f"aligngym/bare {100 * ours / rows['bare'][0]:.1f}% (target >= 75%)"]
            if "aligngym-ray" in rows:
                ratios.append(f"aligngym-ray/bare {100 * rows['aligngym-ray'][0] / rows['bare'][0]:.1f}%")
            if "verifiers" in rows:
                ratios.append(f"aligngym/verifiers {ours / rows['verifiers'][0]:.2f}x (target >= 3x)")
            print(f"{k:>4} " + "; ".join(ratios))
    finally:
        proc.terminate()
        proc.wait()
        if use_ray:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
