"""A short GRPO run through the CLI: the tiny policy must visibly learn from the environment's reward."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from _helpers import run_cli

from aligngym.trainers.config import ConfigError, TrainConfig, load_config
from aligngym.trainers.held_out import (
    GreedyScore,
    HeldOut,
    greedy_score,
    held_out_seeds,
    play_seeds,
    prompts_of,
    score,
    summary_line,
    write_held_out,
)
from aligngym.trainers.logging import quarter_means, read_metrics
from aligngym.trajectory import Trajectory

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
ARITH = "aligngym/Arithmetic-v0"


def test_quickstart_config_loads():
    config = load_config(QUICKSTART)
    assert config.method == "grpo" and config.model == "tiny"
    assert config.env == "aligngym/Arithmetic-v0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "ppo"}, "method"),
        ({"batch_size": 30, "num_generations": 8}, "multiple of num_generations"),
        ({"num_generations": 1, "batch_size": 8}, "num_generations"),
        ({"max_steps": "ten"}, "max_steps must be int"),
        ({"env_kwargs": [1]}, "env_kwargs must be dict"),
    ],
)
def test_bad_configs_say_what_to_fix(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # iterate runs its inner method's checks too, not only its own.
        ({"inner_method": "grpo", "batch_size": 30, "num_generations": 8}, "multiple of num_generations"),
        ({"inner_method": "rloo", "num_generations": 1, "batch_size": 8}, "GRPO needs >= 2"),
        ({"inner_method": "grpo", "vllm_mode": "remote"}, "vllm_mode"),
        ({"inner_method": "dpo", "min_margin": 0}, "min_margin"),
        ({"inner_method": "sft"}, "reward_threshold and/or top_k"),
        ({"inner_method": "reward"}, "inner_method"),
        ({"inner_method": "sft", "top_k": 2, "rounds": 0}, "rounds: must be >= 1"),
    ],
)
def test_iterate_validates_its_inner_method(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "iterate", **data}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match=message):  # a config built in code is checked the same way
        TrainConfig(**{"method": "iterate", **data}).validate()


def test_every_method_runs_the_common_checks(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text("")
    for method, extra in [
        ("grpo", {}),
        ("dpo", {}),
        ("sft", {"top_k": 1}),
        ("reward", {}),
        ("iterate", {"top_k": 1}),
    ]:
        for bad, message in [({"resume": True}, "save_steps"), ({"logging_steps": 0}, "logging_steps")]:
            config = TrainConfig(method=method, data=str(data), **extra, **bad)
            with pytest.raises(ConfigError, match=message):
                config.validate()


def test_iterate_with_a_bad_inner_group_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"method": "iterate", "inner_method": "grpo", "batch_size": 30, "output_dir": str(out)}
        )
    )
    result = run_cli("train", path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "aligngym: error: inner_method grpo: batch_size (30) must be a multiple of num_generations (8)"
    ]
    assert not out.exists() and result.stdout == ""  # no rollout, no model, no output folder


def test_train_help_lists_every_key_with_help_and_default():
    import dataclasses

    from aligngym.trainers.config import GROUPS

    result = run_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        (line,) = [x for x in lines if x.startswith(f"  {f.name} ")]
        assert f.metadata["help"] in line and f"(default {default!r})" in line, line
    for group in GROUPS:
        assert any(x.startswith(f"{group} (") for x in lines), group


def test_int_is_accepted_for_float_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1\n")
    assert load_config(path).learning_rate == 1.0 and isinstance(TrainConfig().learning_rate, float)


@pytest.mark.slow
def test_short_grpo_run_improves_reward(tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config.update(max_steps=120, logging_steps=5)
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = run_cli("train", path, "--output-dir", out, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(out)
    assert len(rows) == 120 // 5 and all("step" in r and "reward" in r for r in rows)
    assert "rewards/correct/mean" in rows[0] and "rewards/format/mean" in rows[0]
    first, last = quarter_means(rows)
    assert last > first + 0.15, f"reward did not improve: {first:.3f} -> {last:.3f}"
    assert (out / "reward_curve.png").stat().st_size > 5000
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_type"] == "llama"
    assert (out / "model" / "tokenizer.json").exists()


@pytest.mark.slow
def test_kl_penalty_reloads_reference_policy_by_path(tmp_path):
    """beta > 0 makes TRL rebuild a reference model from the policy's path: the tiny model must have one."""
    from aligngym.trainers.run import train

    config = load_config(
        QUICKSTART, output_dir=str(tmp_path), max_steps=3, beta=0.04, logging_steps=1, save_model=False
    )
    trainer = train(config)
    assert trainer.ref_model is not None
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.slow
def test_short_rloo_run_improves_reward(tmp_path):
    from aligngym.trainers.run import train

    config = load_config(
        QUICKSTART, output_dir=str(tmp_path), method="rloo", max_steps=120, logging_steps=5, save_model=False
    )
    trainer = train(config)
    g = config.num_generations
    assert trainer.scale_rewards == "none"
    assert float(trainer.reward_weights[0]) == pytest.approx(g / (g - 1))
    first, last = quarter_means(read_metrics(tmp_path))
    assert last > first + 0.15, (first, last)


@pytest.mark.slow
def test_iterate_round_two_beats_round_one(tmp_path):
    from aligngym.trainers.run import train

    config = load_config(
        QUICKSTART,
        output_dir=str(tmp_path),
        method="iterate",
        inner_method="grpo",
        rounds=1,
        max_steps=80,
        episodes_per_round=32,
        samples_per_prompt=1,
        logging_steps=10,
        save_model=False,
    )
    train(config)
    rounds = read_metrics(tmp_path)
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["reward"] >= rounds[0]["reward"] + 0.1, rounds
    assert (tmp_path / "round0" / "trajectories.jsonl").exists() and (tmp_path / "reward_curve.png").exists()


@pytest.mark.slow
def test_lora_trains_adapters_only(tmp_path):
    from aligngym.trainers.run import train

    config = load_config(
        QUICKSTART, output_dir=str(tmp_path), max_steps=2, logging_steps=1, lora_r=4, save_model=False
    )
    trainer = train(config)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path):
    from aligngym.trainers.run import train

    common = {"output_dir": str(tmp_path), "logging_steps": 1, "save_steps": 3, "save_model": False}
    train(load_config(QUICKSTART, max_steps=4, **common))
    assert (tmp_path / "checkpoint-3").is_dir()
    trainer = train(load_config(QUICKSTART, max_steps=6, resume=True, **common))
    assert trainer.state.global_step == 6
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # step 4 of the first run was replaced by the resumed one


def test_vllm_and_resume_options_are_validated(tmp_path):
    for data, message in [({"vllm_mode": "remote"}, "vllm_mode"), ({"resume": True}, "save_steps")]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


@pytest.mark.slow
def test_two_training_processes_step_together_and_write_once(tmp_path):
    # torchrun + gloo on CPU: the same multi-process path as `accelerate launch` on several GPUs.
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    config = {
        "method": "grpo",
        "env": "aligngym/Arithmetic-v0",
        "env_kwargs": {
            "max_operand": 4,
            "max_turns": 2,
        },  # multi-turn: ranks finish episodes at different turns
        "model": "tiny",
        "num_prompts": 16,
        "max_steps": 3,
        "batch_size": 8,
        "num_generations": 4,
        "max_new_tokens": 2,
        "logging_steps": 1,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "aligngym", "train", str(path), "--output-dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("written to") == 1  # the main process reports
    assert "process 1 of 2 finished" in result.stdout  # and the other ran to the end too
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]  # written by the main process only
    assert (out / "model" / "config.json").exists() and (out / "reward_curve.png").exists()


# -- held-out greedy evaluation -------------------------------------------------------------------------
def test_held_out_score_counts_success_failures_and_errors():
    def traj(reward, success, error=None):
        return Trajectory(env_id=ARITH, episode=0, seed=0, reward=reward, success=success, error=error)

    got = score([traj(1.0, True), traj(0.0, False), traj(1.0, True), traj(0.0, None, error="boom")])
    assert got == GreedyScore(episodes=4, accuracy=0.5, mean_reward=2 / 3, errors=1)  # an error is wrong
    no_success = score([traj(0.3, None), traj(0.5, None)])  # an env without a success component
    assert no_success.accuracy is None and no_success.mean_reward == pytest.approx(0.4)
    line = summary_line(no_success, no_success)
    assert line == "greedy mean reward on 2 held-out episodes: before 0.400 -> after 0.400"


def test_held_out_questions_are_new_and_distinct():
    kwargs = {"max_operand": 2}  # 9 questions; seeds 0..4 train on some of them
    trained = prompts_of(ARITH, kwargs, range(5))
    seeds = held_out_seeds(ARITH, kwargs, 5, 100, exclude=trained)
    held = [next(iter(prompts_of(ARITH, kwargs, [s]))) for s in seeds]
    assert min(seeds) >= 5 and len(set(held)) == len(held) == 9 - len(trained)  # all the others, once each
    assert not set(held) & trained
    assert held_out_seeds(ARITH, kwargs, 5, 2, exclude=trained) == seeds[:2]


def test_held_out_of_a_config_uses_the_test_split_and_refuses_when_nothing_is_held_out():
    config = TrainConfig(
        env_kwargs={"max_operand": 4, "split": "train"},
        eval_env_kwargs={"split": "test"},
        num_prompts=50,
        eval_episodes=10,
    )
    held_out = HeldOut(config)
    assert len(held_out.seeds) == 5 and min(held_out.seeds) >= 50  # the test split has 5 questions
    assert held_out.env_kwargs == {"max_operand": 4, "split": "test"}
    with pytest.raises(ConfigError, match="every question"):
        HeldOut(TrainConfig(env_kwargs={"max_operand": 2}, num_prompts=100, eval_episodes=5))
    with pytest.raises(ConfigError, match="eval_episodes"):
        TrainConfig(method="sft", top_k=1, data=str(QUICKSTART), eval_episodes=5).validate()
    with pytest.raises(ConfigError, match="eval_episodes"):
        TrainConfig(eval_episodes=-1).validate()


def test_play_seeds_goes_through_the_episode_engine():
    from _helpers import solve

    from aligngym.agents.scripted import ScriptedAgent

    kwargs = {"max_operand": 9, "split": "test"}
    seeds = held_out_seeds(ARITH, kwargs, 0, 20, exclude=set())
    right = play_seeds(ARITH, kwargs, ScriptedAgent(solve), seeds)
    assert [t.seed for t in right] == seeds and all(t.success for t in right)
    half = score(
        play_seeds(
            ARITH, kwargs, ScriptedAgent(lambda m: solve(m) if "+0" in m[0]["content"] else "?"), seeds
        )
    )
    assert 0 < half.accuracy < 1 and half.errors == 0


def test_greedy_score_of_the_tiny_policy_is_deterministic(tmp_path):
    from aligngym.agents.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny")
    model.train()
    kwargs = {"max_operand": 9, "split": "test"}
    seeds = held_out_seeds(ARITH, kwargs, 0, 20, exclude=set())
    first = greedy_score(model, tokenizer, ARITH, kwargs, seeds, max_new_tokens=2)
    assert first == greedy_score(model, tokenizer, ARITH, kwargs, seeds, max_new_tokens=2)
    assert first.episodes == 20 and first.errors == 0 and first.accuracy is not None
    assert model.training  # left as it was found
    path = write_held_out(tmp_path, first, GreedyScore(20, 0.85, 0.85, 0))
    data = json.loads(path.read_text())
    assert data["after"] == {"episodes": 20, "accuracy": 0.85, "mean_reward": 0.85, "errors": 0}
    assert set(data["before"]) == {"episodes", "accuracy", "mean_reward", "errors"}
    line = summary_line(GreedyScore(20, 0.0, 0.0, 0), GreedyScore(20, 0.85, 0.85, 0))
    assert line == "greedy accuracy on 20 held-out questions: before 0.0 % -> after 85.0 %"


@pytest.mark.slow
def test_quickstart_answers_held_out_questions(tmp_path):
    """The issue's done-condition: the quickstart's greedy policy answers >= 80 % of held-out questions."""
    out = tmp_path / "run"
    result = run_cli("train", QUICKSTART, "--output-dir", out, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    held = json.loads((out / "held_out.json").read_text())
    assert held["before"]["episodes"] == held["after"]["episodes"] == load_config(QUICKSTART).eval_episodes
    assert held["after"]["accuracy"] >= 0.8, held
    assert held["before"]["accuracy"] < held["after"]["accuracy"]
    assert f"greedy accuracy on {held['after']['episodes']} held-out questions: before" in result.stdout
