"""DPO on multi-turn pairs trains on the policy's tokens only: environment turns are context, masked out."""

from __future__ import annotations

import asyncio
import math

import pytest
from _helpers import solve

import aligngym
from aligngym.agents import ScriptedAgent
from aligngym.trainers.config import TrainConfig
from aligngym.trainers.pairs import build_pairs
from aligngym.trajectory import read_trajectories

PROMPT = [{"role": "user", "content": "3+4="}]
#: Both sides answer twice; the environment's reply between the answers differs in text and length.
PAIR = {
    "prompt": PROMPT,
    "chosen": [
        {"role": "assistant", "content": "8"},
        {"role": "user", "content": "wrong, try again"},
        {"role": "assistant", "content": "7"},
    ],
    "rejected": [
        {"role": "assistant", "content": "9"},
        {"role": "user", "content": "no. 9 is not it; think about it and answer once more"},
        {"role": "assistant", "content": "abc"},
    ],
}


@pytest.fixture(scope="module")
def tiny():
    from aligngym.agents.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny")


def _dpo_trainer(tmp_path, tiny, pairs):
    from aligngym.trainers.offline import dpo_trainer

    config = TrainConfig(method="dpo", output_dir=str(tmp_path), max_steps=2, batch_size=2, save_model=False)
    return dpo_trainer(config, *tiny, pairs)


def _trained_and_masked(trainer, n):
    """Per row of the real DPO batch (chosen sides, then rejected), the completion text trained and masked."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    tokenizer = trainer.processing_class
    rows = []
    for row, ids in enumerate(batch["input_ids"].tolist()):
        example, side = trainer.train_dataset[row % n], ("chosen", "rejected")[row // n]
        start = len(example["prompt_ids"])
        end = start + len(example[f"{side}_ids"])
        mask = batch["completion_mask"][row].tolist()
        rows.append(
            {
                "trained": tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]),
                "masked": tokenizer.decode([ids[i] for i in range(start, end) if not mask[i]]),
                "prompt_mask": mask[:start],
            }
        )
    return rows


def _policy_text(messages):
    return "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


def test_dpo_masks_environment_turns_and_trains_every_assistant_turn(tmp_path, tiny):
    trainer = _dpo_trainer(tmp_path, tiny, [PAIR])
    chosen, rejected = _trained_and_masked(trainer, 1)
    # Exactly the policy's turns (content and its end-of-turn token), both of them, on both sides.
    assert chosen["trained"] == "8<|im_end|>7<|im_end|>"
    assert rejected["trained"] == "9<|im_end|>abc<|im_end|>"
    # The environment's turns, different on each side, are in the sequence but all masked (zero).
    assert "wrong, try again" in chosen["masked"]
    assert "think about it and answer once more" in rejected["masked"]
    assert "user" in chosen["masked"] and "assistant" in chosen["masked"]  # turn headers are not the policy's
    assert not any(chosen["prompt_mask"]) and not any(rejected["prompt_mask"])


def test_single_turn_pairs_train_on_the_whole_answer(tmp_path, tiny):
    pair = {"prompt": PROMPT, "chosen": PAIR["chosen"][-1:], "rejected": PAIR["rejected"][-1:]}
    chosen, rejected = _trained_and_masked(_dpo_trainer(tmp_path, tiny, [pair]), 1)
    assert (chosen["trained"], rejected["trained"]) == ("7<|im_end|>", "abc<|im_end|>")
    assert chosen["masked"].strip() == "" and rejected["masked"].strip() == ""  # only the template's newline


def test_implicit_margin_scores_the_tokens_dpo_trains_on(tmp_path, tiny):
    import torch

    from aligngym.trainers.offline import completion_logprob

    model, tokenizer = tiny
    trainer = _dpo_trainer(tmp_path, tiny, [PAIR])
    batch = trainer.data_collator([trainer.train_dataset[0]])
    for row, side in enumerate(("chosen", "rejected")):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        mask = batch["completion_mask"][row][: len(ids)]
        with torch.no_grad():
            logps = torch.log_softmax(model(ids[None]).logits[0, :-1].float(), dim=-1)
        trained = float((logps.gather(1, ids[1:, None])[:, 0] * mask[1:]).sum())
        assert completion_logprob(model, tokenizer, PROMPT, PAIR[side]) == pytest.approx(trained, rel=1e-5)


def test_dpo_trains_on_real_multi_turn_episodes(tmp_path, tiny):
    """Rollouts of Arithmetic-v0 with retries: pairs hold env turns, and a DPO step runs on them."""
    rows = []
    for label, policy in [("retry", lambda m: solve(m) if len(m) > 1 else "x"), ("never", lambda m: "x")]:
        out = tmp_path / f"{label}.jsonl"
        asyncio.run(
            aligngym.rollout(
                "aligngym/Arithmetic-v0",
                ScriptedAgent(policy, name=label),
                episodes=4,
                out=out,
                progress=False,
                env_kwargs={"max_operand": 4, "max_turns": 2},
            )
        )
        rows += read_trajectories(out)
    pairs = build_pairs(rows)
    assert pairs and all(len(p["chosen"]) == 3 and p["chosen"][1]["role"] == "user" for p in pairs)
    trainer = _dpo_trainer(tmp_path / "run", tiny, pairs)
    rows = _trained_and_masked(trainer, len(pairs))
    expected = [_policy_text(p["chosen"]) for p in pairs] + [_policy_text(p["rejected"]) for p in pairs]
    assert [r["trained"] for r in rows] == expected  # both answers of every side, nothing the env wrote
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(x) for x in losses)
