"""Environment-driven generation for TRL: episodes played by the policy being trained.

TRL's ``rollout_func`` hook hands us the prompts of a batch; we play one episode per prompt in the
environment it came from, all of them at once through ``run_episode`` (the driver ``aligngym rollout`` uses),
with the trained policy as their agent (``TrainerPolicy``: one batched generation per round, tools in the chat
template). Each sample is built from the exact token ids the policy sampled (``trainers/tokens.py``), and the
tokens the environment wrote get ``env_mask = 0`` so they are not trained on. An episode that fails (the env
raised) is recorded and becomes an unscorable, zero-advantage sample instead of crashing the training step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngym.agents.local import SamplingConfig, generate_batch
from aligngym.envs.base import run_sync
from aligngym.episode import EnvPool, run_episode
from aligngym.trajectory import Trajectory

from .generation import Generate, ranks_live, vllm_generate
from .logging import seat_key
from .policy_agent import PolicySeat, TrainerPolicy
from .tokens import trajectory_sample

logger = logging.getLogger(__name__)


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """A stable key for a conversational prompt (TRL deep-copies prompts, so identity cannot be used)."""
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


@dataclass
class Slot:
    """One prompt's share of an episode: its seat's trajectory and the tokens trained on."""

    seat: str | None
    trajectory: Trajectory
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    @property
    def episode_id(self) -> str:
        return self.trajectory.episode_id

    @property
    def reward(self) -> float:
        """The episode's reward for this seat; NaN when it failed or has no tokens (nothing to train on)."""
        return self.trajectory.reward if self.done else math.nan

    @property
    def components(self) -> dict[str, float]:
        return self.trajectory.reward_components

    @property
    def messages(self) -> list[dict]:
        return self.trajectory.messages

    @property
    def done(self) -> bool:
        """The episode finished without error and its turns' tokens are known."""
        return not self.trajectory.error and bool(self.trajectory.tokens)


@dataclass
class _Episode:
    seed: int
    seats: list[str | None] = field(default_factory=list)  # the seats prompts asked for


class EnvRollout:
    """A TRL ``rollout_func``: plays each prompt's episode in the environment with the trainer's model.

    Multi-agent environments are self-play: every seat is played by the policy. A prompt stands for one
    (seed, seat); prompts of the same seed but different seats share an episode, so each episode trains every
    seat that the batch asks for.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        tasks_by_prompt: dict[str, tuple[int, str | None]],
        sampling: SamplingConfig,
        failed_path: str | Path | None = None,
    ):
        self.env_id = env_id
        self.tasks_by_prompt = tasks_by_prompt
        self.sampling = sampling
        self.envs = EnvPool(env_id, env_kwargs)
        self.component_names: list[str] = []
        #: Where failed episodes are written (JSONL, appended), when set.
        self.failed_path = Path(failed_path) if failed_path else None
        self.failed = 0
        #: Each seat's mean reward in the last batch's episodes (multi-agent envs; every seat, trained or not).
        self.seat_rewards: dict[str, float] = {}

    def _episodes(
        self, prompts: list[list[dict]]
    ) -> tuple[list[_Episode], list[tuple[_Episode, str | None]]]:
        """The episodes the prompts need, and each prompt's (episode, seat) in prompt order."""
        episodes: list[_Episode] = []
        placed = []
        for prompt in prompts:
            task = self.tasks_by_prompt.get(prompt_key(prompt))
            if task is None:
                raise KeyError("a training prompt does not come from this environment's dataset")
            seed, seat = task
            episode = next(
                (e for e in episodes if e.seed == seed and seat is not None and seat not in e.seats), None
            )
            if episode is None:
                episode = _Episode(seed)
                episodes.append(episode)
            episode.seats.append(seat)
            placed.append((episode, seat))
        return episodes, placed

    def play(
        self,
        model,
        tokenizer,
        prompts: list[list[dict]],
        generate: Generate | None = None,
        live_anywhere: Callable[[bool], bool] | None = None,
    ) -> list[Slot]:
        """Play the episodes behind ``prompts`` at once, batching the policy's turns across all live seats.

        ``generate`` defaults to sampling from ``model``; ``live_anywhere`` (see ``generation.ranks_live``)
        keeps several training processes generating in lockstep.
        """
        generate = generate or (lambda contexts: generate_batch(model, tokenizer, contexts, self.sampling))
        episodes, placed = self._episodes(prompts)
        policy = TrainerPolicy(tokenizer, generate, live_anywhere)
        groups = run_sync(self._play_all(policy, episodes))
        by_seat = {(id(e), t.agent_id): t for e, group in zip(episodes, groups, strict=True) for t in group}
        self.seat_rewards = seat_rewards(groups)
        return [self._slot(seat, by_seat[(id(e), seat)], tokenizer) for e, seat in placed]

    async def _play_all(self, policy: TrainerPolicy, episodes: list[_Episode]) -> list[list[Trajectory]]:
        # Every seat exists before the first generation round, so that round waits for all of them.
        jobs = []
        for episode in episodes:
            env = self.envs.take()
            if hasattr(env, "possible_agents"):
                seats: dict[str, PolicySeat] | PolicySeat = {s: policy.seat() for s in env.possible_agents}
            else:
                seats = policy.seat()
            jobs.append((episode, env, seats))

        async def one(episode: _Episode, env: Any, seats: dict[str, PolicySeat] | PolicySeat):
            group: list[Trajectory] = []
            try:
                group = await run_episode(env, seats, episode.seed, env_id=self.env_id, episode=episode.seed)
            finally:
                for seat in seats.values() if isinstance(seats, dict) else [seats]:
                    seat.end()
                await self.envs.give_back(env, bool(group) and not group[0].error)
            return group

        serving = asyncio.ensure_future(policy.serve())
        try:
            groups = await asyncio.gather(*(one(*job) for job in jobs))
        finally:
            await serving
        return list(groups)

    def _slot(self, seat: str | None, trajectory: Trajectory, tokenizer) -> Slot:
        if trajectory.error or not trajectory.tokens:
            self._record_failure(trajectory)
            # Zero advantage: nothing is trained on (mask 0), and its reward is NaN (see __call__).
            eos = [tokenizer.eos_token_id]
            return Slot(seat, trajectory, [tokenizer.eos_token_id], eos, [0], [0.0])
        sample = trajectory_sample(trajectory, tokenizer)
        logprobs = sample.logprobs or [0.0] * len(sample.completion_ids)
        return Slot(seat, trajectory, sample.prompt_ids, sample.completion_ids, sample.env_mask, logprobs)

    def _record_failure(self, trajectory: Trajectory) -> None:
        self.failed += 1
        logger.warning("episode (seed %s) failed and trains nothing: %s", trajectory.seed, trajectory.error)
        if self.failed_path is not None:
            self.failed_path.parent.mkdir(parents=True, exist_ok=True)
            with self.failed_path.open("a", encoding="utf-8") as f:
                f.write(trajectory.to_json() + "\n")

    def __call__(self, prompts: list[list[dict]], trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        generate = vllm_generate(trainer) if getattr(trainer, "use_vllm", False) else None
        try:
            slots = self.play(model, trainer.processing_class, prompts, generate, ranks_live(trainer))
        finally:
            model.train(was_training)
        _log_seat_rewards(trainer, self.seat_rewards)
        # A failed episode's reward and components are NaN: TRL then counts the sample as unscorable, leaves
        # it out of its group's baseline and gives it zero advantage (GRPOTrainer, "unscorable_mask").
        rewards = [s.reward for s in slots]
        out: dict[str, list] = {
            "prompt_ids": [s.prompt_ids for s in slots],
            "completion_ids": [s.completion_ids for s in slots],
            "logprobs": [s.logprobs for s in slots],
            "env_mask": [s.env_mask for s in slots],
            "env_reward": rewards,
        }
        for name in self.component_names:
            out[f"component_{name}"] = [
                float(s.components.get(name, math.nan)) if s.done else math.nan for s in slots
            ]
        return out


def seat_rewards(groups: list[list[Trajectory]]) -> dict[str, float]:
    """Each seat's mean reward over the episodes of ``groups`` that finished; empty for single-agent envs."""
    rewards: dict[str, list[float]] = {}
    for group in groups:
        for trajectory in group:
            if trajectory.agent_id is not None and not trajectory.error:
                rewards.setdefault(trajectory.agent_id, []).append(trajectory.reward)
    return {seat: sum(values) / len(values) for seat, values in sorted(rewards.items())}


def _log_seat_rewards(trainer, rewards: dict[str, float]) -> None:
    """Log each seat's reward with the step's metrics (``seat/<seat>/reward`` in metrics.jsonl).

    TRL's ``_log_metric`` (what its reward functions' ``log_metric`` calls) averages a value over the logging
    step and across processes; a TRL without it logs no seat rewards rather than failing the step.
    """
    log = getattr(trainer, "_log_metric", None)
    if log is None:
        return
    for seat, reward in rewards.items():
        log(seat_key(seat), reward)
