"""The console every command shares (aligngym/console.py) and what `aligngym train` shows with it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from _helpers import run_cli
from rich.console import Console

from aligngym.console import Bar, format_figures, print_summary

GRPO_LOGS = {
    "loss": 0.01,
    "reward": 0.41,
    "rewards/env/mean": 0.41,
    "rewards/correct/mean": 0.22,
    "rewards/correct/std": 0.4,
    "rewards/format/mean": 1.0,
    "seat/agent_0/reward": 0.5,
    "seat/agent_1/reward": 0.25,
}


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=200, soft_wrap=True), buffer


def test_figures_read_reward_first_then_components_and_leave_unknowns_out():
    text = format_figures(0.41, {"correct": 0.22, "format": None}, {"loss": 0.5, "errors": 2, "kl": None})
    assert text == "reward 0.410 (correct 0.220)  loss 0.500  errors 2"
    assert format_figures(None, {"correct": 1.0}, {"loss": 2e-5}) == "loss 2.00e-05"


def test_a_bar_off_a_terminal_prints_a_line_per_tenth_and_the_end():
    console, buffer = _console(terminal=False)
    with Bar("grpo", 20, console=console, interval_s=0) as bar:
        for step in range(1, 21):
            bar.update(step, reward=step / 20, components={"correct": 0.1})
    lines = buffer.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]
    assert lines[4].startswith("grpo 10/20 steps  reward 0.500 (correct 0.100)") and " ETA " in lines[4]
    assert lines[-1].startswith("grpo 20/20 steps  reward 1.000") and "ETA" not in lines[-1]


def test_a_short_run_off_a_terminal_prints_only_its_last_line():
    console, buffer = _console(terminal=False)
    with Bar("round 0 rollout", 64, unit="episodes", console=console) as bar:
        for _ in range(64):
            bar.update(advance=1, reward=0.5, errors=0)
    assert buffer.getvalue().splitlines() == [
        f"round 0 rollout 64/64 episodes  reward 0.500  errors 0  {buffer.getvalue().split()[-1]}"
    ]


def test_a_bar_on_a_terminal_redraws_with_its_figures_and_an_eta():
    console, buffer = _console(terminal=True)
    with Bar("grpo", 5, console=console) as bar:
        bar.update(5, reward=0.75, components={"correct": 0.5})
    out = buffer.getvalue()
    assert "5/5" in out and "reward 0.750 (correct 0.500)" in out and "ETA" in out
    assert "\r" in out or "\x1b[" in out  # drawn in place, not printed line by line


def test_the_summary_lists_figures_and_every_file_or_says_nothing_was_written():
    console, buffer = _console(terminal=False)
    print_summary(
        "grpo on env finished in 0:03",
        [("final reward", "0.720"), ("greedy accuracy", "20.0% -> 85.0%")],
        "runs/x",
        [("metrics.jsonl", "every step"), ("model/", "the model")],
        console=console,
    )
    assert buffer.getvalue().splitlines() == [
        "grpo on env finished in 0:03",
        "  final reward     0.720",
        "  greedy accuracy  20.0% -> 85.0%",
        "written to runs/x:",
        "  metrics.jsonl  every step",
        "  model/         the model",
    ]
    console, buffer = _console(terminal=False)
    print_summary("t", [], "runs/y", [], console=console)
    assert buffer.getvalue().splitlines() == ["t", "nothing written to runs/y"]


_WARN = """
import sys, warnings
if sys.argv[1] == "quiet":
    from aligngym.console import quiet_libraries
    quiet_libraries()
import trl
trl.GRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none")  # TRL's own defaults warn
for _ in range(3):
    warnings.warn_explicit("old knob", FutureWarning, "/site-packages/peft/tuners.py", 7, module="peft.tuners")
warnings.warn("the user's own warning", UserWarning)
"""


@pytest.mark.slow
def test_known_library_warnings_are_hidden_others_shown_once_and_the_users_untouched(tmp_path):
    def run(mode: str) -> str:
        env = {**os.environ, "PYTHONWARNINGS": "default"}
        result = subprocess.run(
            [sys.executable, "-c", _WARN, mode], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr

    loud, quiet = run("loud"), run("quiet")
    assert "gradient_checkpointing` is deprecated" in loud  # the noise exists without the filter
    assert "gradient_checkpointing" not in quiet
    assert quiet.count("old knob") == 1 and "warning (peft): old knob" in quiet
    assert "UserWarning: the user's own warning" in quiet


def test_step_figures_pick_reward_components_and_seats_or_the_offline_figures():
    from aligngym.trainers.train_console import step_figures

    assert step_figures(GRPO_LOGS) == {
        "reward": 0.41,
        "components": {"correct": 0.22, "format": 1.0},
        "agent_0": 0.5,
        "agent_1": 0.25,
    }
    dpo = {"loss": 0.6, "rewards/accuracies": 0.75, "rewards/margins": 0.04, "mean_token_accuracy": 0.0}
    assert step_figures(dpo) == {"loss": 0.6, "pair acc": 0.75, "margin": 0.04}
    assert step_figures({"loss": 4.2, "mean_token_accuracy": 0.3}) == {"loss": 4.2, "token acc": 0.3}


def test_final_reward_is_the_last_quarters_mean_or_the_last_step_and_says_which():
    from aligngym.trainers.train_console import final_figures

    rows = [{"step": s, **GRPO_LOGS, "reward": s / 8, "rewards/correct/mean": s / 16} for s in range(1, 9)]
    figures = dict(final_figures(rows))
    assert figures["final reward"] == "0.938  (mean of the last quarter, steps 7-8; first quarter 0.188)"
    assert figures["  components"] == "correct 0.469, format 1.000"
    assert figures["  per seat"] == "agent_0 0.500, agent_1 0.250"
    short = dict(final_figures([{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.5, "accuracy": 0.75}]))
    assert short == {"final loss": "0.500  (the last logged step, 2)", "  and": "pair acc 0.750"}
    assert final_figures([{"step": 1, "epoch": 1.0}]) == []


def test_held_out_score_is_read_from_its_file_when_present(tmp_path):
    from aligngym.trainers.train_console import held_out_figures

    path = tmp_path / "held_out.json"
    assert held_out_figures(path) == []
    score = {"accuracy": 0.219, "mean_reward": 0.3, "episodes": 64, "errors": 0}
    after = {**score, "accuracy": 0.85, "mean_reward": 0.9}
    path.write_text(json.dumps({"before": score, "after": after}))
    assert held_out_figures(path) == [
        ("greedy accuracy", "21.9% -> 85.0% on 64 held-out episodes (mean reward 0.300 -> 0.900)")
    ]
    no_success = {"accuracy": None, "mean_reward": 0.5, "episodes": 8}
    path.write_text(json.dumps({"before": no_success, "after": no_success}))
    assert held_out_figures(path) == [("greedy mean reward", "0.500 -> 0.500 on 8 held-out episodes")]


def test_only_what_the_run_wrote_is_announced(tmp_path):
    from aligngym.trainers.train_console import written

    stale = tmp_path / "margin_curve.png"
    stale.write_bytes(b"png from an earlier run")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    started = time.time() - 1.0
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "reward_curve.png").write_bytes(b"png")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "round0").mkdir()
    assert written(tmp_path, since=started) == ["metrics.jsonl", "reward_curve.png", "round0", "model"]
    assert "margin_curve.png" in written(tmp_path)


def test_seat_rewards_average_each_seat_over_finished_episodes():
    from aligngym.trainers.env_rollout import seat_rewards
    from aligngym.trajectory import Trajectory

    def seat(name: str, reward: float, error: str | None = None) -> Trajectory:
        return Trajectory("e", 0, 0, reward=reward, agent_id=name, error=error)

    groups = [[seat("a", 1.0), seat("b", 0.0)], [seat("a", 0.0), seat("b", 1.0)], [seat("a", 5.0, "boom")]]
    assert seat_rewards(groups) == {"a": 0.5, "b": 0.5}
    assert seat_rewards([[Trajectory("e", 0, 0, reward=1.0)]]) == {}  # single-agent: no seats


def _short_grpo(tmp_path, **extra) -> str:
    config = {
        "method": "grpo",
        "env": "aligngym/Arithmetic-v0",
        "env_kwargs": {"max_operand": 4},
        "model": "tiny",
        "num_prompts": 16,
        "max_steps": 2,
        "batch_size": 8,
        "num_generations": 4,
        "max_new_tokens": 2,
        "logging_steps": 1,
        **extra,
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_train_shows_a_bar_and_a_summary_of_the_files_that_exist_not_trl_dicts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / "margin_curve.png"  # an earlier DPO run's plot in the reused folder
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    result = run_cli("train", _short_grpo(tmp_path), "--output-dir", out, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in (
        "{'loss'",
        "'reward':",
        "Loading weights",
        "FutureWarning",
        "Writing model shards",
        "it/s]",
    ):
        assert noise not in console, noise
    lines = result.stdout.splitlines()
    assert lines[0].startswith("grpo 2/2 steps  reward ") and "(correct " in lines[0]
    assert lines[1].startswith("grpo on aligngym/Arithmetic-v0 finished in ")
    assert lines[2].startswith("  final reward  ") and "the last logged step, 2" in lines[2]
    files = lines[lines.index(f"written to {out}:") + 1 :]
    names = [line.split()[0] for line in files]
    assert names == ["metrics.jsonl", "loss_curve.png", "reward_curve.png", "model/"]
    assert all((out / name).exists() for name in names) and "margin_curve.png" not in result.stdout


@pytest.mark.slow
def test_train_verbose_prints_trls_dict_at_each_logging_step(tmp_path):
    result = run_cli(
        "train", _short_grpo(tmp_path), "--output-dir", tmp_path / "run", "--verbose", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dicts = [line for line in result.stdout.splitlines() if line.startswith("{'loss'")]
    assert len(dicts) == 2 and all("'rewards/correct/mean'" in line for line in dicts)
