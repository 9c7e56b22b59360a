"""``aligngym eval``: exact pass@k, pass^k and intervals from known success patterns, models side by side,
envs without a notion of success, the files it writes, and its usage errors."""

from __future__ import annotations

import asyncio
import json
import math
import statistics

import pytest
from _helpers import solve

from aligngym.agents.scripted import ScriptedAgent
from aligngym.cli import main
from aligngym.envs.registry import make
from aligngym.eval_report import console_table, write_reports
from aligngym.eval_stats import pass_at_k, pass_hat_k, t_interval, t_quantile
from aligngym.evaluate import evaluate, trajectory_path
from aligngym.trajectory import read_trajectories

ARITH = "aligngym/Arithmetic-v0"
#: Student's t for 95 % two-sided, from printed tables.
T_TABLE = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}
#: Per task (env seed): the samples' outcomes, R right (reward 1.5), W wrong (-1: reward 0.5), E an error.
PLAN = {0: "RRRR", 1: "REWW", 2: "WWWW"}


def prompt_of(seed: int) -> str:
    env = make(ARITH)
    obs, _ = env.reset(seed=seed)
    env.close()
    return obs


def planned(plan: dict[int, str]):
    """A reply function playing ``plan``: each prompt's requests take its outcomes in turn."""
    left = {prompt_of(seed): list(marks) for seed, marks in plan.items()}

    def reply(messages, request=None):
        mark = left[messages[0]["content"]].pop(0)
        if mark == "E":
            raise ConnectionError("backend down")
        return solve(messages) if mark == "R" else "-1"

    return reply


# -- the estimators --------------------------------------------------------------------------------------
def test_pass_at_k_and_pass_hat_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(1 / 4)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 1/2
    assert pass_at_k(4, 1, 3) == pytest.approx(3 / 4)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_hat_k(10, 3, 2) == pytest.approx(3 / 45) and pass_hat_k(4, 1, 2) == 0.0
    assert pass_hat_k(4, 4, 4) == 1.0 and pass_hat_k(4, 3, 1) == pass_at_k(4, 3, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)  # k > n: not estimable from these samples


def test_t_interval_uses_students_t():
    for df, t in T_TABLE.items():
        assert t_quantile(0.95, df) == pytest.approx(t, abs=5e-4)
    values = [1.0, 2.0, 4.0]
    lo, hi = t_interval(values)
    half = 4.302652729749464 * statistics.stdev(values) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert t_interval([1.0]) is None


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30, 999, 5000):
        assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-5)


# -- evaluate: known patterns, exact numbers -------------------------------------------------------------
def test_known_success_patterns_give_exact_pass_at_k(tmp_path):
    models = {
        "good": ScriptedAgent(planned(PLAN)),
        "bad": ScriptedAgent(planned(dict.fromkeys(PLAN, "WWWW"))),
    }
    results = asyncio.run(
        evaluate([ARITH], models, tasks=3, samples=4, out_dir=tmp_path, concurrency=3, progress=False)
    )
    good, bad = results
    assert (good.model, bad.model) == ("good", "bad")
    assert [(t.task, t.samples, t.successes, t.errors) for t in good.tasks] == [
        (0, 4, 4, 0),
        (1, 4, 1, 1),
        (2, 4, 0, 0),
    ]
    # By hand: task 1 has c=1 of n=4 (its error counts as a failure).
    assert good.pass_at_k == pytest.approx({1: 5 / 12, 2: (1 + 1 / 2) / 3, 3: (1 + 3 / 4) / 3, 4: 2 / 3})
    assert good.pass_hat_k == pytest.approx({1: 5 / 12, 2: 1 / 3, 3: 1 / 3, 4: 1 / 3})
    per_task = [1.5, (1.5 + 0.5 + 0.5) / 3, 0.5]  # the errored sample has no reward
    assert [t.mean_reward for t in good.tasks] == pytest.approx(per_task)
    assert good.mean_reward == pytest.approx(sum(per_task) / 3)
    half = 4.302652729749464 * statistics.stdev(per_task) / math.sqrt(3)
    assert good.ci95 == pytest.approx((good.mean_reward - half, good.mean_reward + half))
    assert good.errors == 1 and good.episodes == 12
    assert bad.pass_at_k == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0} and bad.ci95 == pytest.approx((0.5, 0.5))
    # The rows are the rollout engine's: each task's seed played 4 times, samples numbered.
    rows = read_trajectories(trajectory_path(tmp_path, ARITH, "good"))
    assert sorted((r["prompt_index"], r["sample_index"], r["seed"]) for r in rows) == [
        (t, s, t) for t in range(3) for s in range(4)
    ]

    paths = write_reports(results, tmp_path, {"tasks": 3, "samples": 4})
    document = json.loads(paths["results.json"].read_text())
    assert [(r["model"], r["pass_at_k"]["2"]) for r in document["results"]] == [("good", 0.5), ("bad", 0.0)]
    assert document["results"][0]["tasks"][1] == {
        "task": 1,
        "seed": 1,
        "seat": None,
        "samples": 4,
        "errors": 1,
        "successes": 1,
        "mean_reward": pytest.approx(2.5 / 3),
    }
    markdown = paths["results.md"].read_text()
    assert "| | good | bad |" in markdown and "| pass@4 | 0.667 | 0.000 |" in markdown
    assert paths["results.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = console_table(results).splitlines()
    assert table[0].split()[:4] == ["env", "model", "mean", "reward"] and len(table) == 3


def test_an_env_without_success_reports_pass_at_k_as_not_defined(tmp_path):
    scores = iter(["Score: 9", "Score: 1"] * 10)
    agent = ScriptedAgent(lambda messages: next(scores))
    (judge,) = asyncio.run(
        evaluate(["aligngym/Judge-v0"], {"m": agent}, tasks=2, samples=2, out_dir=tmp_path, progress=False)
    )
    assert judge.success is None and judge.pass_at_k is None and judge.pass_hat_k is None
    assert "pass@k not defined" in judge.note and judge.mean_reward is not None
    assert all(t.successes is None for t in judge.tasks)
    # An explicit threshold on reward defines it, and says so.
    rows = read_trajectories(judge.trajectories)
    from aligngym.evaluate import SuccessRule, cell

    high = sorted(r["reward"] for r in rows)[-1]
    defined = cell("aligngym/Judge-v0", "m", judge.trajectories, rows, 2, SuccessRule(None, high))
    wins = [sum(r["reward"] >= high for r in rows if r["prompt_index"] == t) for t in range(2)]
    assert defined.success == f"reward >= {high:g} (--success-threshold)"
    assert defined.pass_at_k[1] == pytest.approx(sum(w / 2 for w in wins) / 2)


def test_multi_agent_tasks_are_per_seat(tmp_path):
    agent = ScriptedAgent(["Answer: 4"])
    (debate,) = asyncio.run(
        evaluate(["aligngym/Debate-v0"], {"m": agent}, tasks=2, samples=2, out_dir=tmp_path, progress=False)
    )
    seats = {t.seat for t in debate.tasks}
    assert len(debate.tasks) == 2 * len(seats) and all(t.samples == 2 for t in debate.tasks)
    assert debate.success == "env component 'correct' reaches 1" and set(debate.pass_at_k) == {1, 2}


# -- the command -----------------------------------------------------------------------------------------
def test_cli_eval_against_a_server_compares_two_models(chat_server, tmp_path, capsys):
    plans = {
        "good": planned({0: "RRRR", 1: "RWWW", 2: "WWWW"}),
        "bad": planned(dict.fromkeys(range(3), "WWWW")),
    }
    server = chat_server(lambda messages, request: plans[request["model"]](messages))
    out = tmp_path / "ev"
    args = ["eval", ARITH, "--model", "good", "--model", "bad", "--base-url", server.base_url]
    code = main([*args, "--samples", "4", "--tasks", "3", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    good = document["results"][0]
    assert good["pass_at_k"] == pytest.approx({"1": 5 / 12, "2": 0.5, "3": (1 + 3 / 4) / 3, "4": 2 / 3})
    assert good["pass_hat_k"]["4"] == pytest.approx(1 / 3) and good["errors"] == 0
    assert document["settings"]["samples"] == 4 and document["method"]["ci95"].startswith("95% Student t")
    # The console: a table, then where every file went.
    assert "pass@4" in printed and "written to" in printed
    for name in (
        "results.json",
        "results.md",
        "results.png",
        "trajectories/aligngym_Arithmetic-v0__good.jsonl",
    ):
        assert name in printed and (out / name).exists()


def test_cli_eval_with_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", ARITH, "--model", "tiny", "--samples", "2", "--tasks", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "tiny" in printed
    assert len(read_trajectories(out / "trajectories" / "aligngym_Arithmetic-v0__tiny.jsonl")) == 4
    assert "4/4 episodes" in printed  # the progress bar's last line (not a terminal: plain lines)


def _usage_error(capsys, *args) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_cli_eval_usage_errors(capsys, tmp_path):
    out = tmp_path / "ev"
    assert "ENV_ID" in _usage_error(capsys, "eval", "--model", "tiny", "--out", out)
    assert "seat maps" in _usage_error(capsys, "eval", ARITH, "--model", "agent_0=tiny", "--out", out)
    assert "no ENV_ID" in _usage_error(capsys, "eval", ARITH, "--reverify", "x.jsonl", "--out", out)
    assert "not found" in _usage_error(capsys, "eval", "--reverify", tmp_path / "none.jsonl", "--out", out)
    assert "--samples" in _usage_error(
        capsys, "eval", ARITH, "--model", "tiny", "--samples", "0", "--out", out
    )
    assert "unknown environment" in _usage_error(capsys, "eval", "x/Nope-v0", "--model", "tiny", "--out", out)
    err = _usage_error(capsys, "eval", ARITH, "--model", "tiny", "--env-kwargs", "x/Y-v0={}", "--out", out)
    assert "not one of the ENV_IDs" in err


def test_cli_eval_refuses_to_mix_runs(capsys, tmp_path):
    out = tmp_path / "ev"
    asyncio.run(
        evaluate([ARITH], {"m": ScriptedAgent(["1"])}, tasks=2, samples=2, out_dir=out, progress=False)
    )
    args = ["eval", ARITH, "--model", "m", "--tasks", "2", "--out", out]
    assert "--resume" in _usage_error(capsys, *args, "--samples", "2")
    err = _usage_error(capsys, *args, "--samples", "3", "--resume")
    assert "--samples-per-prompt 2 (this run: 3)" in err
