"""Every benchmark runs in ``--quick`` mode and prints its table (a smoke test: no timing is asserted)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port_pair() -> int:
    """A port p with p + 1 free too (rollout_throughput's ToolUse server takes the next one)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def run_benchmark(script: str, *flags: str, timeout: float = 600, cwd: Path = ROOT, env=None) -> str:
    """Run ``benchmarks/<script> --quick`` like a user would; its stdout (failing the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_rollout_throughput_quick():
    out = run_benchmark("rollout_throughput.py", "--port", str(_free_port_pair()))
    assert "QUICK" in out
    for row in ("bare (C workers)", "bare (gather+sem, old)", "aligngym"):
        assert out.count(f"\n{row} ") == 2, out  # the single-turn table and the ToolUse one
    assert "single-turn aligngym/Arithmetic-v0, C=8" in out
    assert "multi-turn aligngym/ToolUse-v0, 3 turns/episode" in out
    verdicts = [line for line in out.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert len(verdicts) == 2, out
    assert "C=8 client CPU per episode, aligngym / bare (C workers)" in verdicts[0]
    assert "ToolUse extra client CPU per turn" in verdicts[1]


def test_sandbox_quick():
    out = run_benchmark("sandbox.py")
    for row in ("floor: fork + exit", "baseline: python -I -S -c", "baseline (old): python -c"):
        assert row in out, out
    assert "p90" in out and "throughput of trivial runs" in out


def test_grpo_overhead_quick():
    out = run_benchmark("grpo_overhead.py")
    assert "like for like (checked every round): 24 samples" in out, out  # 3 steps x batch 8
    assert "plain TRL GRPOTrainer" in out and "aligngym GRPO (env)" in out
    assert any(line.startswith(("PASS GRPO", "FAIL GRPO")) for line in out.splitlines()), out


def test_env_overhead_quick():
    out = run_benchmark("env_overhead.py")
    assert "Per-step overhead" in out and "bare gym.Env (echo)" in out


def test_memory_quick():
    out = run_benchmark("memory.py", "--envs", "aligngym/Arithmetic-v0", "aligngym/ToolUse-v0")
    assert "per instance" in out
    assert "aligngym/Arithmetic-v0" in out and "aligngym/ToolUse-v0" in out


def test_against_commit_quick(tmp_path):
    """In a clone (its worktree and the base install stay under tmp_path, never in this checkout's git), with
    this tree's benchmark scripts copied in: the base is the clone's HEAD."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    for script in (ROOT / "benchmarks").glob("*.py"):
        shutil.copy(script, clone / "benchmarks" / script.name)
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # the base install's cache folder
    done = subprocess.run(
        [sys.executable, "benchmarks/against_commit.py", "--quick", "--base", "HEAD", "--"]
        + ["benchmarks/env_overhead.py"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "===== base HEAD (run 1" in done.stdout and "===== current (run 1" in done.stdout
    assert done.stdout.count("Per-step overhead") == 2, done.stdout
