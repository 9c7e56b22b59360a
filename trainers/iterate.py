"""``method: iterate``: rounds of rollout -> train -> rollout with the updated policy (automated alignment loop)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .logging import METRICS_FILE


async def _rollout_policy(model, tokenizer, config: TrainConfig, out: Path, label: str) -> float:
    """Roll the current policy out ``samples_per_prompt`` times over the round's seeds; mean reward."""
    import aligngym
    from aligngym.agents.local import SamplingConfig, TransformersAgent

    agent = TransformersAgent(
        model,
        tokenizer,
        sampling=SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature),
    )
    summary = await aligngym.rollout(
        config.env,
        agent,
        episodes=config.episodes_per_round,
        samples_per_prompt=config.samples_per_prompt,
        out=out,
        env_kwargs=config.env_kwargs,
        seed=config.seed,
        label=label,
    )
    return summary.mean_reward


def train_iterate(config: TrainConfig, model, tokenizer, methods: dict[str, Any]):
    """Run ``rounds`` rounds; returns the last inner trainer. Writes per-round reward to metrics.jsonl."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    trainer = None
    for r in range(config.rounds + 1):
        data = out / f"round{r}" / "trajectories.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        reward = asyncio.run(_rollout_policy(model, tokenizer, config, data, f"round {r} rollout"))
        rounds.append({"step": r, "round": r, "reward": reward})
        if r == config.rounds:
            break  # the last rollout only measures the final policy
        inner = dataclasses.replace(
            config, method=config.inner_method, data=str(data), output_dir=str(data.parent), save_model=False
        )
        trainer = methods[config.inner_method](inner, model, tokenizer)
        model = trainer.model
    # The run's metrics are the rounds; the inner trainers' steps stay in their round folders.
    (out / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rounds))
    return trainer
