"""The CLI as a user runs it: a real subprocess talking to a real OpenAI-protocol HTTP server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from _helpers import run_cli, solve

from aligngym.trajectory import read_trajectories

CLI = [sys.executable, "-m", "aligngym"]


def test_envs_lists_every_registered_id():
    import aligngym

    # Entry points off: env packages installed on this machine are not ours to list here.
    result = run_cli("envs", env={**os.environ, "ALIGNGYM_ENTRY_POINTS": "0"})
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    # A fresh process lists the built-ins; other tests in this process may have registered their own ids.
    assert listed == sorted(i for i in aligngym.registered() if i.startswith("aligngym/"))
    kinds = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert kinds["aligngym/Debate-v0"] == "multi-agent" and kinds["aligngym/CodeExec-v0"] == "single-agent"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["rollout", "aligngym/Nope-v0", "--model", "m", "--episodes", "1", "--out", "x"],
            "unknown environment id",
        ),
        (
            [
                "rollout",
                "aligngym/Arithmetic-v0",
                "--model",
                "m",
                "--episodes",
                "1",
                "--out",
                "x",
                "--env-kwargs",
                "{oops",
            ],
            "--env-kwargs is not valid JSON",
        ),
        (
            [
                "rollout",
                "aligngym/Arithmetic-v0",
                "--model",
                "m",
                "--episodes",
                "1",
                "--out",
                "x",
                "--env-kwargs",
                '{"colour": 1}',
            ],
            "unexpected keyword argument 'colour'",
        ),
        (
            [
                "rollout",
                "aligngym/Arithmetic-v0",
                "--model",
                "m",
                "--episodes",
                "1",
                "--out",
                "x",
                "--base-url",
                "http://127.0.0.1:9/v1",
            ],
            "cannot reach",
        ),
        (["train", "does-not-exist.yaml"], "not found"),
        (
            ["rollout", "aligngym/CodeExec-v0", "--model", "m", "--episodes", "1", "--out", "x"]
            + ["--max-sandboxes", "0"],
            "--max-sandboxes must be >= 1",
        ),
        (
            ["rollout", "aligngym/Arithmetic-v0", "--model", "x", "--episodes", "1", "--out", "x"]
            + ["--workers", "2"],
            "cannot load model",  # checked in the driver, though only the workers load it
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    result = run_cli(*[str(tmp_path / a) if a == "x" else a for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_yaml_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grpo\n  env: [unclosed\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("method: grpo\nlearning_rat: 0.1\n")
    wrong_env = tmp_path / "env.yaml"
    wrong_env.write_text("env: aligngym/Missing-v0\n")
    no_model = tmp_path / "model.yaml"
    no_model.write_text(f"model: {tmp_path / 'no-such-model'}\nmax_steps: 1\n")
    for path, message in [
        (bad, "invalid YAML"),
        (unknown, "unknown key(s) learning_rat"),
        (wrong_env, "unknown environment"),
        (no_model, "model: cannot load"),
    ]:
        result = run_cli("train", str(path))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr


def test_rollout_against_openai_protocol_server(chat_server, tmp_path):
    server = chat_server(lambda messages, request: solve(messages))
    out = tmp_path / "r.jsonl"
    result = run_cli(
        "rollout",
        "aligngym/Arithmetic-v0",
        "--model",
        "scripted",
        "--base-url",
        server.base_url,
        "--episodes",
        "20",
        "--concurrency",
        "4",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    rows = read_trajectories(out)
    assert sorted(r["episode"] for r in rows) == list(range(20))
    assert all(r["reward"] == 1.5 and r["error"] is None for r in rows)
    assert server.requests >= 20
    assert "wrote 20 episodes" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["local", "ray-2-workers"])
def test_kill_9_then_resume_loses_and_repeats_nothing(chat_server, tmp_path, workers):
    if workers:
        pytest.importorskip("ray", reason="Ray is the optional extra aligngym[ray]")
    server = chat_server(lambda messages, request: solve(messages), latency_s=0.05)
    out = tmp_path / "r.jsonl"
    args = [
        "rollout",
        "aligngym/Arithmetic-v0",
        "--model",
        "scripted",
        "--base-url",
        server.base_url,
        "--episodes",
        "150",
        "--concurrency",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *(["--workers", str(workers)] if workers else []),
    ]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 20):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_trajectories(out))
    assert 20 <= done_before < 150, "the kill must land mid-run"
    with out.open("a") as fh:
        fh.write('{"env_id": "aligngym/Arithmetic-v0", "episode": 149, "se')  # as if cut mid-write
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    episodes = [r["episode"] for r in read_trajectories(out)]
    assert sorted(episodes) == list(range(150)), "each episode exactly once"
    assert re.search(rf"skipped +{done_before} already done", result.stdout), result.stdout
