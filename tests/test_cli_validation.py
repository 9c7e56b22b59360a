"""The CLI refuses what would lose data or waste a run: one line on stderr, exit 2, before any episode."""

from __future__ import annotations

import asyncio
import json

import pytest

from aligngym.agents.scripted import ScriptedAgent
from aligngym.cli import main
from aligngym.rollout import RolloutAborted, rollout
from aligngym.trajectory import read_trajectories

ARITH = "aligngym/Arithmetic-v0"


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def _write_run(path, env_id=ARITH, seed=0, env_kwargs=None, episodes=3) -> None:
    asyncio.run(
        rollout(
            env_id,
            ScriptedAgent(["1"]),
            episodes=episodes,
            out=path,
            seed=seed,
            env_kwargs=env_kwargs,
            progress=False,
        )
    )


# -- data safety -----------------------------------------------------------------------------------------
def test_existing_out_is_not_replaced_without_a_flag(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    _write_run(out)
    before = out.read_bytes()
    code, err = _cli(capsys, "rollout", ARITH, "--model", "tiny", "--episodes", "1", "--out", out)
    _one_line_usage_error(code, err, "--resume", "--overwrite")
    assert out.read_bytes() == before
    code, err = _cli(
        capsys,
        "rollout",
        ARITH,
        "--model",
        "tiny",
        "--episodes",
        "1",
        "--out",
        out,
        "--resume",
        "--overwrite",
    )
    _one_line_usage_error(code, err, "give one of them")


@pytest.mark.parametrize(
    ("flags", "difference"),
    [
        (["--seed", "7"], "--seed 0 (this run: 7)"),
        (["--env-kwargs", '{"max_operand": 5}'], "--env-kwargs {} (this run"),
    ],
)
def test_resume_refuses_a_file_of_another_run(capsys, tmp_path, flags, difference):
    out = tmp_path / "r.jsonl"
    _write_run(out)
    before = out.read_bytes()
    args = ["rollout", ARITH, "--model", "tiny", "--episodes", "5", "--out", out, "--resume", *flags]
    code, err = _cli(capsys, *args)
    _one_line_usage_error(code, err, difference)
    assert out.read_bytes() == before


def test_resume_refuses_a_file_of_another_env(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    _write_run(out)
    args = ["rollout", "aligngym/CodeExec-v0", "--model", "tiny", "--episodes", "5", "--out", out, "--resume"]
    code, err = _cli(capsys, *args)
    _one_line_usage_error(code, err, "env id 'aligngym/Arithmetic-v0'")


def test_library_resume_refuses_another_run_too(tmp_path):
    out = tmp_path / "r.jsonl"
    _write_run(out, env_kwargs={"max_operand": 5})
    with pytest.raises(ValueError, match="--env-kwargs"):
        asyncio.run(rollout(ARITH, ScriptedAgent(["1"]), episodes=5, out=out, resume=True, progress=False))
    # the same run resumes and does only what is missing
    asyncio.run(
        rollout(
            ARITH,
            ScriptedAgent(["1"]),
            episodes=5,
            out=out,
            resume=True,
            progress=False,
            env_kwargs={"max_operand": 5},
        )
    )
    assert sorted(r["episode"] for r in read_trajectories(out)) == [0, 1, 2, 3, 4]


def test_out_that_is_a_directory(capsys, tmp_path):
    code, err = _cli(capsys, "rollout", ARITH, "--model", "tiny", "--episodes", "1", "--out", tmp_path)
    _one_line_usage_error(code, err, "is a directory")


def test_pairs_on_a_file_that_is_not_jsonl(capsys, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("these are notes\nnot trajectories\n")
    code, err = _cli(capsys, "pairs", bad, "--out", tmp_path / "p.jsonl")
    _one_line_usage_error(code, err, "line 1 is not a trajectory row")
    assert not (tmp_path / "p.jsonl").exists()


# -- env arguments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sandbox": "dockr"}, "sandbox 'dockr' is not a backend"),
        ({"sandbox": 5}, "sandbox must be a backend name"),
        ({"sandbox_kwargs": {"memroy_mb": 256}}, "unknown key 'memroy_mb'"),
        ({"sandbox_kwargs": {"memory_mb": "x"}}, "memory_mb must be int"),
        ({"sandbox_kwargs": {"memory_mb": -5}}, "memory_mb must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"max_turns": 1e309}, "max_turns must be a finite number"),
        ({"max_turns": 2.5}, "max_turns must be int"),
        ({"max_turns": True}, "max_turns must be int"),
    ],
)
def test_bad_env_kwargs_stop_before_the_first_episode(capsys, tmp_path, kwargs, message):
    out = tmp_path / "r.jsonl"
    args = ["rollout", "aligngym/CodeExec-v0", "--model", "tiny", "--episodes", "2", "--out", out]
    code, err = _cli(capsys, *args, "--env-kwargs", json.dumps(kwargs))
    _one_line_usage_error(code, err, message)
    assert not out.exists()


def test_missing_optional_extra_is_one_line(capsys, tmp_path, monkeypatch):
    """An env whose extra is not installed says what to pip install, exit 2, before any episode."""
    import sys

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if `aligngym[reasoning-gym]` were absent
    out = tmp_path / "r.jsonl"
    args = ["rollout", "aligngym/ReasoningGym-v0", "--model", "tiny", "--episodes", "1", "--out", out]
    code, err = _cli(capsys, *args)
    _one_line_usage_error(code, err, "pip install 'aligngym[reasoning-gym]'")
    assert not out.exists()


def test_first_episodes_failing_alike_stop_the_run(tmp_path):
    class Broken(ScriptedAgent):
        async def act(self, messages, tools=None):
            self.calls += 1
            raise RuntimeError("model not loaded")

    agent = Broken(["x"])
    out = tmp_path / "r.jsonl"
    with pytest.raises(RolloutAborted, match="first 3 episodes all failed .* model not loaded"):
        asyncio.run(rollout(ARITH, agent, episodes=50, out=out, concurrency=1, progress=False, fail_fast=3))
    assert agent.calls == 3
    assert [r["error"] for r in read_trajectories(out)] == ["RuntimeError: model not loaded"] * 3


def test_one_success_among_the_first_keeps_the_run_going(tmp_path):
    class Flaky(ScriptedAgent):
        async def act(self, messages, tools=None):
            self.calls += 1
            if self.calls != 2:
                raise RuntimeError("flaky")
            return await super().act(messages, tools)

    agent = Flaky(["1"])
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        rollout(ARITH, agent, episodes=12, out=out, concurrency=1, progress=False, fail_fast=3)
    )
    assert summary.written == 12


def test_cli_exits_non_zero_when_the_run_stops_early(capsys, tmp_path, chat_server):
    # GET /models answers; every chat request is refused with a non-retried 400.
    server = chat_server(["1"], faults=[None] + [{"status": 400, "message": "bad model"}] * 100)
    out = tmp_path / "r.jsonl"
    args = ["rollout", ARITH, "--model", "m", "--base-url", server.base_url, "--episodes", "40"]
    code, err = _cli(capsys, *args, "--out", out, "--concurrency", "1", "--no-progress")
    assert code == 1, err
    assert "first 3 episodes all failed" in err and "bad model" in err
    assert len(read_trajectories(out)) == 3


# -- messages that point at the fix ----------------------------------------------------------------------
def test_missing_local_model_path_says_so(capsys, tmp_path):
    missing = tmp_path / "models" / "my-model"
    args = ["rollout", ARITH, "--model", missing, "--episodes", "1", "--out", tmp_path / "r.jsonl"]
    code, err = _cli(capsys, *args)
    _one_line_usage_error(code, err, "does not exist")
    assert "Repo id" not in err


def test_offline_hub_name_fails_at_once(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["rollout", ARITH, "--model", "nobody-here/no-such-model", "--episodes", "1"]
    code, err = _cli(capsys, *args, "--out", tmp_path / "r.jsonl")
    _one_line_usage_error(code, err, "not in the local Hugging Face cache", "HF_HUB_OFFLINE")


def test_base_url_without_v1_suggests_it(capsys, tmp_path, chat_server):
    server = chat_server(["1"])
    bare = server.base_url.removesuffix("/v1")
    args = ["rollout", ARITH, "--model", "m", "--base-url", bare, "--episodes", "1"]
    code, err = _cli(capsys, *args, "--out", tmp_path / "r.jsonl")
    _one_line_usage_error(code, err, "HTTP 404", f"did you mean --base-url {bare}/v1")


def test_gzipped_task_files_are_read(tmp_path):
    import gzip

    from aligngym.envs.datasets import load_rows

    rows = [{"id": "a", "x": "é"}, {"id": "b", "x": 2}]
    path = tmp_path / "tasks.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert load_rows(str(path), "unused") == rows
    binary = tmp_path / "tasks.jsonl"
    binary.write_bytes(b"\xff\xfe not text")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_rows(str(binary), "unused")


def test_yaml_exponent_learning_rate_is_a_float(tmp_path):
    from aligngym.trainers.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-5\n")
    assert load_config(path).learning_rate == 1e-5
    for bad in ("nan", "fast", ".inf"):
        path.write_text(f"learning_rate: {bad}\n")
        with pytest.raises(ConfigError, match="learning_rate must be"):
            load_config(path)


def test_gym_make_on_a_multi_agent_id_points_to_aligngym_make():
    import gymnasium as gym

    import aligngym

    with pytest.raises(gym.error.Error, match=r"use aligngym\.make\('aligngym/Debate-v0'"):
        gym.make("aligngym/Debate-v0")
    assert hasattr(aligngym.make("aligngym/Debate-v0"), "possible_agents")


def test_train_reports_only_the_files_it_wrote(tmp_path):
    from aligngym.cli.train import _written

    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "loss_curve.png").write_bytes(b"png")
    (tmp_path / "model").mkdir()
    assert _written(str(tmp_path)) == ["metrics.jsonl", "loss_curve.png", "model"]
    assert _written(str(tmp_path / "empty")) == ["nothing"]
