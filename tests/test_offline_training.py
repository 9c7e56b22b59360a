"""Learning from stored trajectories: pairs builder, `aligngym pairs`, DPO margins, SFT rejection sampling."""

from __future__ import annotations

import asyncio
import json

import pytest
from _helpers import run_cli, solve

import aligngym
from aligngym.agents import ScriptedAgent
from aligngym.trainers.config import load_config
from aligngym.trainers.pairs import PairConfig, build_pairs, build_sft, split_prompt
from aligngym.trajectory import read_trajectories

GARBAGE = ["x?", "no", "abc", "hm.", "??"]


def _rollouts(tmp_path, episodes, seed=0, name="mixed"):
    """Real rollouts of two policies on the same seeds: one answers right, one writes garbage."""
    rows = []
    for label, policy in [
        ("right", solve),
        ("garbage", lambda m: GARBAGE[len(m[0]["content"]) % len(GARBAGE)]),
    ]:
        out = tmp_path / f"{name}-{label}.jsonl"
        asyncio.run(
            aligngym.rollout(
                "aligngym/Arithmetic-v0",
                ScriptedAgent(policy, name=label),
                episodes=episodes,
                out=out,
                seed=seed,
                progress=False,
                env_kwargs={"max_operand": 4},
            )
        )
        rows += read_trajectories(out)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, path


def test_pairs_prefer_higher_reward_and_respect_margin(tmp_path):
    rows, _ = _rollouts(tmp_path, 6)
    pairs = build_pairs(rows)
    prompts = {json.dumps(r["messages"][0]) for r in rows}
    assert {json.dumps(p["prompt"][0]) for p in pairs} == prompts  # every task yields a pair
    for pair in pairs:
        assert pair["chosen"][0]["content"] == solve(pair["prompt"])
        assert pair["rejected"][0]["content"] in GARBAGE
        assert pair["chosen_reward"] - pair["rejected_reward"] >= 0.1
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    assert build_pairs(rows, PairConfig(min_margin=5.0)) == []
    failed = [{**r, "error": "AgentError: boom"} for r in rows]
    assert build_pairs(failed) == []


def test_multi_turn_pairs_keep_the_whole_conversation():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "wrong"},
        {"role": "assistant", "content": "a2"},
    ]
    prompt, completion = split_prompt(messages)
    assert prompt == messages[:1] and completion == messages[1:]
    rows = [
        {"env_id": "e", "episode": 0, "messages": messages, "reward": 1.0, "error": None},
        {"env_id": "e", "episode": 1, "messages": messages[:2], "reward": 0.0, "error": None},
    ]
    (pair,) = build_pairs(rows)
    assert pair["chosen"] == messages[1:] and pair["rejected"] == messages[1:2]


def test_sft_filter_threshold_and_top_k(tmp_path):
    rows, _ = _rollouts(tmp_path, 5)
    assert {r["reward"] for r in build_sft(rows, PairConfig(reward_threshold=1.0))} == {1.5}
    assert len(build_sft(rows, PairConfig(top_k=1))) == 5
    with pytest.raises(ValueError, match="reward_threshold or top_k"):
        build_sft(rows, PairConfig())


def test_pairs_cli(tmp_path):
    _, path = _rollouts(tmp_path, 4)
    out = tmp_path / "pairs.jsonl"
    result = run_cli("pairs", path, "--out", out, "--min-margin", "0.5")
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 4 and "4 pairs" in result.stdout
    missing = run_cli("pairs", tmp_path / "none.jsonl", "--out", out)
    assert missing.returncode == 2 and "not found" in missing.stderr


@pytest.mark.slow
def test_dpo_grows_implicit_margin_on_held_out_pairs(tmp_path):
    from aligngym.agents.tiny import load_model_and_tokenizer
    from aligngym.trainers.offline import implicit_margin
    from aligngym.trainers.run import train

    _, train_path = _rollouts(tmp_path, 24, seed=0, name="train")
    held_rows, _ = _rollouts(tmp_path, 6, seed=1000, name="held")
    held = build_pairs(held_rows)
    config = load_config(
        _yaml(tmp_path, method="dpo", data=str(train_path), max_steps=30, batch_size=8, learning_rate=0.001)
    )
    trainer = train(config)
    reference, tokenizer = load_model_and_tokenizer("tiny")
    policy = trainer.model.eval()
    margins = [implicit_margin(policy, reference, tokenizer, p) for p in held]
    assert sum(margins) / len(margins) > 0.5, margins
    assert (tmp_path / "run" / "margin_curve.png").exists() and (tmp_path / "run" / "loss_curve.png").exists()


@pytest.mark.slow
def test_sft_on_filtered_behaviour_lowers_loss_and_raises_reward(tmp_path):
    from aligngym.agents import TransformersAgent
    from aligngym.agents.local import SamplingConfig
    from aligngym.trainers.logging import read_metrics
    from aligngym.trainers.run import train

    _, train_path = _rollouts(tmp_path, 25, seed=0, name="train")
    config = load_config(
        _yaml(
            tmp_path,
            method="sft",
            data=str(train_path),
            reward_threshold=1.0,
            max_steps=60,
            batch_size=8,
            learning_rate=0.003,
        )
    )
    trainer = train(config)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses[-1] < losses[0] * 0.7, losses

    async def mean_reward(model, tokenizer, label):
        agent = TransformersAgent(
            model, tokenizer, sampling=SamplingConfig(max_new_tokens=3, temperature=0.0)
        )
        summary = await aligngym.rollout(
            "aligngym/Arithmetic-v0",
            agent,
            episodes=25,
            out=tmp_path / f"{label}.jsonl",
            seed=500,
            env_kwargs={"max_operand": 4},
            progress=False,
        )
        return summary.mean_reward

    from aligngym.agents.tiny import load_model_and_tokenizer

    before = asyncio.run(mean_reward(*load_model_and_tokenizer("tiny"), "before"))
    after = asyncio.run(mean_reward(trainer.model.eval(), trainer.processing_class, "after"))
    assert after > before + 0.3, (before, after)


def _yaml(tmp_path, **fields):
    import yaml

    path = tmp_path / "config.yaml"
    fields.setdefault("output_dir", str(tmp_path / "run"))
    fields.setdefault("logging_steps", 5)
    fields.setdefault("save_model", False)
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.mark.slow
def test_reward_model_learns_env_preferences(tmp_path):
    from aligngym.trainers.offline import pair_accuracy
    from aligngym.trainers.run import train

    _, train_path = _rollouts(tmp_path, 24, seed=0, name="train")
    held_rows, _ = _rollouts(tmp_path, 12, seed=2000, name="held")
    held = build_pairs(held_rows)
    config = load_config(
        _yaml(
            tmp_path,
            method="reward",
            data=str(train_path),
            max_steps=40,
            batch_size=8,
            learning_rate=0.001,
            save_model=True,
        )
    )
    trainer = train(config)
    accuracy = pair_accuracy(trainer.model.eval(), trainer.processing_class, held)
    assert accuracy >= 0.8, accuracy
    # Closing the loop: the learned reward model becomes the reward of RewardModel-v0.
    model_dir = tmp_path / "run" / "model"
    env = aligngym.make("aligngym/RewardModel-v0", reward_model=str(model_dir), prompts=["3+1="]).unwrapped
    rewards = {}
    for answer in ("4", "abc"):
        env.reset(seed=0)
        rewards[answer] = env.step(answer)[1]
    assert rewards["4"] > rewards["abc"], rewards
