"""Rollouts on Ray: same rows as a local run, and a worker killed mid-episode loses and repeats nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from _helpers import run_cli, solve

from aligngym.trajectory import read_trajectories

ray = pytest.importorskip("ray", reason="Ray is the optional extra aligngym[ray]")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rollout(server, out, episodes: int, *flags, timeout: float = 240, env: dict | None = None):
    """``aligngym rollout`` of Arithmetic by the scripted agent against ``server``, with extra ``flags``."""
    return run_cli(
        "rollout",
        "aligngym/Arithmetic-v0",
        *("--model", "scripted", "--base-url", server.base_url, "--episodes", episodes, *flags),
        *("--out", out, "--no-progress"),
        timeout=timeout,
        env=env,
    )


def test_cli_rollout_with_two_workers(chat_server, tmp_path):
    server = chat_server(lambda messages, request: solve(messages))
    out = tmp_path / "r.jsonl"
    result = _rollout(server, out, 24, "--concurrency", 4, "--workers", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_trajectories(out)
    assert sorted(r["episode"] for r in rows) == list(range(24))
    assert all(r["reward"] == 1.5 and r["seed"] == r["episode"] for r in rows)


def test_progress_line_counts_the_turns_played_on_the_workers(chat_server, tmp_path):
    server = chat_server(lambda messages, request: solve(messages))
    out = tmp_path / "r.jsonl"
    result = run_cli(
        "rollout",
        "aligngym/Arithmetic-v0",
        *("--model", "scripted", "--base-url", server.base_url, "--episodes", 12, "--workers", 2),
        *("--concurrency", 2, "--out", out),
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The final frame of the bar: each of the 12 single-turn episodes counted by the actor that played it.
    printed = result.stdout + result.stderr
    assert "12/12 episodes" in printed and "turns 12 " in printed, result.stdout[-2000:]


def test_ray_run_stops_when_its_first_episodes_fail_alike(chat_server, tmp_path):
    # GET /models answers; every chat request is refused with a non-retried 400.
    server = chat_server(["1"], faults=[None] + [{"status": 400, "message": "bad model"}] * 400)
    out = tmp_path / "r.jsonl"
    result = _rollout(server, out, 200, "--workers", 2, "--concurrency", 1, "--fail-fast", 3)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "first 3 episodes all failed" in result.stderr and "bad model" in result.stderr
    # Episodes in flight when the third failure arrived may finish, but the run stops well short of 200.
    assert 3 <= len(read_trajectories(out)) <= 3 + 2, len(read_trajectories(out))


def test_killed_worker_episodes_are_retried_elsewhere(local_ray, chat_server, tmp_path):
    from aligngym.distributed import rollout_ray

    server = chat_server(lambda messages, request: solve(messages), latency_s=0.1)
    out = tmp_path / "r.jsonl"
    spec = {"model": "scripted", "base_url": server.base_url}

    async def main():
        run = asyncio.create_task(
            rollout_ray(
                "aligngym/Arithmetic-v0",
                spec,
                episodes=60,
                out=out,
                workers=2,
                concurrency=4,
                progress=False,
                name_prefix="killtest",
            )
        )
        while not out.exists() or len(out.read_text().splitlines()) < 8:
            await asyncio.sleep(0.05)
        ray.kill(ray.get_actor("killtest-0"), no_restart=True)  # mid-episode: it has 4 in flight
        return await run

    summary = asyncio.run(main())
    rows = read_trajectories(out)
    assert sorted(r["episode"] for r in rows) == list(range(60)), "none lost, none duplicated"
    assert summary.errors == 0 and all(r["reward"] == 1.5 for r in rows)
    assert summary.retried >= 1, "the kill must have hit episodes in flight"


def test_cluster_wide_sandbox_cap_holds_across_workers(local_ray, chat_server, tmp_path):
    import re
    import tempfile
    import threading

    from aligngym.distributed import rollout_ray
    from aligngym.sandboxes.owner import LOCAL_PREFIX

    reply = "```python\nimport time\ntime.sleep(0.3)\n```"
    server = chat_server(lambda messages, request: reply, latency_s=0.05)
    out = tmp_path / "r.jsonl"
    worker_pids: set[str] = set()
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        # Count the workers' sandbox directories on disk: an observation independent of the quota actor.
        pattern = re.compile(re.escape(LOCAL_PREFIX) + r"(\d+)-")
        while not stop.is_set():
            names = os.listdir(tempfile.gettempdir())
            seen.append(sum(1 for n in names if (m := pattern.match(n)) and m.group(1) in worker_pids))
            time.sleep(0.005)

    async def main():
        run = asyncio.create_task(
            rollout_ray(
                "aligngym/CodeExec-v0",
                {"model": "scripted", "base_url": server.base_url},
                episodes=16,
                out=out,
                workers=2,
                concurrency=3,
                env_kwargs={"sandbox_kwargs": {"slot_timeout": 90}},
                progress=False,
                name_prefix="captest",
                max_sandboxes=2,
            )
        )
        for i in range(2):
            while True:
                try:
                    actor = ray.get_actor(f"captest-{i}")
                    break
                except ValueError:
                    await asyncio.sleep(0.05)
            worker_pids.add(str(await actor.pid.remote()))
        return await run

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        summary = asyncio.run(main())
    finally:
        stop.set()
        sampler.join()
    rows = read_trajectories(out)
    assert sorted(r["episode"] for r in rows) == list(range(16))
    assert summary.errors == 0, [r["error"] for r in rows if r.get("error")]
    assert 1 <= max(seen) <= 2, f"{max(seen)} sandboxes were live at once under a cap of 2"
    assert summary.sandboxes_peak == 2, "six episodes in flight must have reached the cap"


def test_episodes_in_flight_are_bounded_by_workers_times_concurrency(local_ray, chat_server, tmp_path):
    from aligngym.distributed import rollout_ray

    server = chat_server(lambda messages, request: solve(messages), latency_s=0.1)
    summary = asyncio.run(
        rollout_ray(
            "aligngym/Arithmetic-v0",
            {"model": "scripted", "base_url": server.base_url},
            episodes=60,
            out=tmp_path / "r.jsonl",
            workers=2,
            concurrency=3,
            progress=False,
        )
    )
    assert summary.written == 60 and summary.errors == 0
    # Back-pressure: never more than 2 x 3 episodes (one request each) at once, and the lanes do fill up.
    assert 4 <= server.peak_in_flight <= 6, server.peak_in_flight


@pytest.fixture
def ray_cluster(tmp_path):
    """An existing cluster, as `ray start --head` makes one (token auth off, so HOST:PORT is enough)."""
    import shutil
    import socket

    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the `ray` command is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    argv = [ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "2", "--block"]
    argv += ["--include-dashboard", "false", "--disable-usage-stats"]
    head = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "ray start did not come up"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        head.terminate()  # --block: it stops the processes it started
        head.wait(timeout=60)
        # `ray start` records itself as the machine's latest cluster, which plain ray.init() would join.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and str(port) in current.read_text():
            current.unlink()


def test_cli_rollout_on_an_existing_cluster(ray_cluster, chat_server, tmp_path):
    address, env = ray_cluster
    server = chat_server(lambda messages, request: solve(messages))
    out = tmp_path / "r.jsonl"
    result = _rollout(server, out, 12, "--workers", 2, "--ray-address", address, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Connected to Ray cluster" in result.stderr  # joined it, did not start a local instance
    assert sorted(r["episode"] for r in read_trajectories(out)) == list(range(12))


def test_unreachable_cluster_is_a_one_line_usage_error(chat_server, tmp_path):
    server = chat_server(lambda messages, request: "7")
    result = _rollout(
        server, tmp_path / "r.jsonl", 1, "--workers", 2, "--ray-address", "127.0.0.1:9", timeout=60
    )
    assert result.returncode == 2 and "cannot reach the Ray cluster" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
