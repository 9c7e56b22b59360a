"""The aligngym-ray column of ``rollout_throughput.py``: ``rollout_ray`` on Ray actors, CPU of the whole tree.

Ray is initialised before timing, and the figures are the difference between a run of N + W episodes and a
run of W (W = 2C), so Ray's and the actors' start-up cancel out; CPU is the driver's plus every process Ray
started (actors, raylet, GCS), polled from a thread.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time


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


def start_ray() -> str | None:
    """Start a local Ray before any timing; why not, or None when it is up."""
    try:
        import ray

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # not installed, or cannot start
        return f"{type(exc).__name__}: {exc}"
    return None


def stop_ray() -> None:
    import ray

    ray.shutdown()
