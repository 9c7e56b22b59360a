"""Greedy accuracy on held-out questions: the policy at temperature 0, before and after training.

Held out means never trained on: the episodes are taken from seeds after the ones training plays
(``trained_seeds``), with ``eval_env_kwargs`` over the env's kwargs (e.g. Arithmetic's ``split: test``), and
an episode whose first prompt is one of the training prompts, or repeats an earlier held-out one, is skipped.
They are played through the shared episode engine (``run_episode``), so a held-out score is exactly what
``aligngym rollout`` would measure; accuracy counts ``Trajectory.success`` (the env's ``success_component``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aligngym.envs.base import run_sync
from aligngym.envs.registry import make
from aligngym.episode import EnvPool
from aligngym.trajectory import Trajectory

from .config import ConfigError, TrainConfig
from .env_rollout import prompt_key

HELD_OUT_FILE = "held_out.json"
#: Seeds tried per held-out question wanted before giving up (an env with few questions has few to hold out).
SEEDS_PER_QUESTION = 50


@dataclass
class GreedyScore:
    """One greedy pass over the held-out questions."""

    episodes: int
    #: Fraction of trajectories whose ``success`` is True (failed episodes count as wrong); None when the env
    #: has no notion of success.
    accuracy: float | None
    #: Mean reward over the trajectories that finished without error (None when none did).
    mean_reward: float | None
    errors: int


def first_prompts(env: Any, seed: int) -> list[str]:
    """The keys of the first prompt of every seat of the episode ``seed`` (one for a single-agent env)."""
    _, infos = env.reset(seed=seed)
    if hasattr(env, "possible_agents"):
        return [prompt_key(infos[seat]["messages"]) for seat in env.possible_agents]
    return [prompt_key(infos["messages"])]


def held_out_seeds(
    env_id: str, env_kwargs: dict[str, Any], start: int, count: int, exclude: Collection[str]
) -> list[int]:
    """Up to ``count`` seeds from ``start`` on whose prompts are new: not in ``exclude``, not seen before.

    Fewer come back when ``count * SEEDS_PER_QUESTION`` seeds hold no more new questions.
    """
    env = make(env_id, **env_kwargs)
    env = getattr(env, "unwrapped", env)
    seen = set(exclude)
    seeds: list[int] = []
    try:
        for seed in range(start, start + count * SEEDS_PER_QUESTION):
            keys = first_prompts(env, seed)
            if seen.isdisjoint(keys):
                seeds.append(seed)
                if len(seeds) == count:
                    break
            seen.update(keys)
    finally:
        env.close()
    return seeds


def score(trajectories: Iterable[Trajectory]) -> GreedyScore:
    """Accuracy, mean reward and errors of played trajectories."""
    trajs = list(trajectories)
    finished = [t.reward for t in trajs if not t.error]
    has_success = any(t.success is not None for t in trajs)
    return GreedyScore(
        episodes=len(trajs),
        accuracy=sum(bool(t.success) for t in trajs) / len(trajs) if has_success else None,
        mean_reward=sum(finished) / len(finished) if finished else None,
        errors=len(trajs) - len(finished),
    )


def play_seeds(env_id: str, env_kwargs: dict[str, Any], agent: Any, seeds: list[int]) -> list[Trajectory]:
    """Play the episodes of ``seeds`` at once with ``agent`` (every seat's policy) via ``run_episode``."""

    async def play() -> list[list[Trajectory]]:
        envs = EnvPool(env_id, env_kwargs)
        try:
            return await asyncio.gather(*(envs.play(agent, i, seed) for i, seed in enumerate(seeds)))
        finally:
            envs.close()

    return [t for group in run_sync(play()) for t in group]


def greedy_score(
    model, tokenizer, env_id: str, env_kwargs: dict[str, Any], seeds: list[int], max_new_tokens: int
) -> GreedyScore:
    """Play ``seeds`` with ``model`` decoding greedily (all episodes at once, batched) and score them."""
    from aligngym.agents.local import SamplingConfig, TransformersAgent

    was_training = model.training
    agent = TransformersAgent(
        model,
        tokenizer,
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0),
        max_batch_size=max(1, len(seeds)),
        name="greedy",
    )
    try:
        return score(play_seeds(env_id, env_kwargs, agent, seeds))
    finally:
        model.train(was_training)


def trained_seeds(config: TrainConfig) -> range:
    """The env seeds whose episodes a run trains on: GRPO's prompts, and iterate's rollouts as well."""
    if config.method in ("grpo", "rloo"):
        return range(config.num_prompts)
    if config.method == "iterate":
        online = config.num_prompts if config.inner_method in ("grpo", "rloo") else 0
        return range(max(online, config.seed + config.episodes_per_round))
    raise ConfigError(
        f"eval_episodes: the prompts {config.method} trains on are not env seeds; use grpo, rloo or iterate"
    )


def prompts_of(env_id: str, env_kwargs: dict[str, Any], seeds: Iterable[int]) -> set[str]:
    """The keys of the first prompts of the episodes ``seeds``."""
    env = make(env_id, **env_kwargs)
    env = getattr(env, "unwrapped", env)
    try:
        return {key for seed in seeds for key in first_prompts(env, seed)}
    finally:
        env.close()


class HeldOut:
    """The held-out questions of one training run (``eval_episodes`` of them), scored greedily on demand."""

    def __init__(self, config: TrainConfig):
        trained = trained_seeds(config)
        self.env_id = config.env
        self.env_kwargs = {**config.env_kwargs, **config.eval_env_kwargs}
        self.max_new_tokens = config.max_new_tokens
        exclude = prompts_of(config.env, config.env_kwargs, trained)
        self.seeds = held_out_seeds(self.env_id, self.env_kwargs, trained.stop, config.eval_episodes, exclude)
        if not self.seeds:
            raise ConfigError(
                f"eval_episodes: every question of {self.env_id} with eval_env_kwargs "
                f"{config.eval_env_kwargs or {}} is a training prompt; hold some out (e.g. a test split)"
            )

    def score(self, model, tokenizer) -> GreedyScore:
        """Greedy accuracy of ``model`` on the held-out questions."""
        return greedy_score(model, tokenizer, self.env_id, self.env_kwargs, self.seeds, self.max_new_tokens)


def write_held_out(output_dir: str | Path, before: GreedyScore, after: GreedyScore) -> Path:
    """``OUTPUT_DIR/held_out.json``: ``{"before": {...}, "after": {...}}``, each a ``GreedyScore``."""
    path = Path(output_dir) / HELD_OUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"before": asdict(before), "after": asdict(after)}, indent=2) + "\n")
    return path


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def summary_line(before: GreedyScore, after: GreedyScore) -> str:
    """The line a run prints at its end: greedy accuracy (or mean reward) before and after training."""
    if before.accuracy is None or after.accuracy is None:
        b = "n/a" if before.mean_reward is None else f"{before.mean_reward:.3f}"
        a = "n/a" if after.mean_reward is None else f"{after.mean_reward:.3f}"
        return f"greedy mean reward on {after.episodes} held-out episodes: before {b} -> after {a}"
    return (
        f"greedy accuracy on {after.episodes} held-out questions: "
        f"before {_percent(before.accuracy)} -> after {_percent(after.accuracy)}"
    )
