"""The rollout loop: N episodes, K at a time on one asyncio loop, each written to JSONL when it ends."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligngym.agents.base import Agent
from aligngym.agents.seeding import derive_seed
from aligngym.envs.registry import make

from .console import Bar
from .episode import EnvPool, run_episode, seat_agents
from .trajectory import RunKey, Trajectory, TrajectoryWriter


class RolloutAborted(RuntimeError):
    """The first episodes of a run all failed the same way, so the rest were not played."""


@dataclass
class RolloutSummary:
    """What a rollout run did: counts, mean reward over the episodes that finished without error."""

    path: str
    requested: int
    written: int
    skipped: int
    errors: int
    mean_reward: float
    duration_s: float
    turns: int
    #: Episodes handed to another worker because theirs died (Ray rollouts).
    retried: int = 0
    #: Most sandboxes live at once across the workers, when a cluster-wide cap was set (Ray rollouts).
    sandboxes_peak: int | None = None

    @property
    def episodes_per_s(self) -> float:
        """Episodes written per second of wall time."""
        return self.written / self.duration_s if self.duration_s else 0.0


async def play_episode(
    env: Any,
    agent: Agent,
    env_id: str,
    episode: int,
    seed: int | None,
    on_turn: Callable[[], None] | None = None,
) -> Trajectory:
    """One single-agent episode (``run_episode`` for one policy); errors become the trajectory's ``error``."""
    return (await run_episode(env, agent, seed, env_id=env_id, episode=episode, on_turn=on_turn))[0]


def episode_seeds(
    episode: int, seed: int, samples_per_prompt: int = 1, sampling_seed: int | None = None
) -> tuple[int, int | None]:
    """Episode ``episode``'s env seed (``seed`` + its prompt index) and its own sampling seed (or None).

    The sampling seed depends on the prompt's seed and the sample index, not on N: sample j of a prompt samples
    alike in runs with different ``--samples-per-prompt``, and the N samples of a prompt differ.
    """
    prompt, sample = divmod(episode, samples_per_prompt)
    env_seed = seed + prompt
    return env_seed, None if sampling_seed is None else derive_seed(sampling_seed, env_seed, sample)


def seed_local_sampling(sampling_seed: int | None) -> None:
    """Seed torch's global generator for local models (a run at concurrency 1 then samples alike each time)."""
    if sampling_seed is not None and "torch" in sys.modules:
        sys.modules["torch"].manual_seed(sampling_seed)


async def rollout(
    env_id: str,
    agent: Agent | dict[str, Agent],
    *,
    episodes: int,
    out: str | Path,
    concurrency: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    fail_fast: int = 0,
    samples_per_prompt: int = 1,
    sampling_seed: int | None = None,
    label: str | None = None,
) -> RolloutSummary:
    """Play ``episodes`` prompts of ``env_id``, each ``samples_per_prompt`` times (``episodes * N`` in all).

    Episode ``i`` is sample ``i % N`` of prompt ``i // N`` and uses env seed ``seed + i // N``. ``agent`` is one
    policy, or for multi-agent envs a ``{seat: policy}`` map; multi-agent episodes write one row per seat,
    linked by ``episode_id``. With a ``sampling_seed`` each request carries a seed derived from it (see
    ``episode_seeds`` and ``agents.seeding``) and torch is seeded for local models. When the first
    ``fail_fast`` episodes (0: never) all fail with the same error, no more start and ``RolloutAborted`` is
    raised (their rows are written). ``label`` names the progress bar (default: the env id).
    """
    env_kwargs = env_kwargs or {}
    if episodes < 0 or concurrency < 1 or samples_per_prompt < 1:
        raise ValueError("episodes must be >= 0, concurrency and samples_per_prompt >= 1")
    first_env = make(env_id, **env_kwargs)  # bad env ids and kwargs fail here, before any work
    if not hasattr(first_env, "possible_agents") and isinstance(agent, dict):
        raise ValueError(f"{env_id} is single-agent: pass one agent, not a seat map")
    if hasattr(first_env, "possible_agents"):
        seat_agents(first_env, agent)  # a seat map that misses or invents a seat fails before any work
    envs = EnvPool(env_id, env_kwargs, spare=first_env)
    run = RunKey(env_id, seed, env_kwargs, samples_per_prompt)
    writer = TrajectoryWriter(out, resume=resume, run=run)
    total = episodes * samples_per_prompt
    todo = [i for i in range(total) if i not in writer.done]
    skipped = total - len(todo)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in todo:
        queue.put_nowait(i)
    tally = Tally(writer, len(todo), label or env_id, progress, fail_fast=fail_fast)
    seed_local_sampling(sampling_seed)

    async def worker() -> None:
        while not queue.empty() and tally.aborted is None:
            i = queue.get_nowait()
            env_seed, episode_sampling = episode_seeds(i, seed, samples_per_prompt, sampling_seed)
            tally.record(await envs.play(agent, i, env_seed, tally.turn, sampling_seed=episode_sampling))

    try:
        if tally.bar:
            tally.bar.start()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    finally:
        if tally.bar:
            tally.bar.stop()
        envs.close()
        writer.close()
    if tally.aborted is not None:
        raise RolloutAborted(tally.aborted)
    return tally.summary(out, total, skipped)


class Tally:
    """Writes finished episodes and keeps the counts a run reports (and shows on its progress bar)."""

    def __init__(self, writer: TrajectoryWriter, total: int, label: str, progress: bool, fail_fast: int = 0):
        self.writer = writer
        self.written = self.errors = self.ok = self.turns = self.retried = 0
        self.live_turns = 0
        self.reward = 0.0
        self.start = time.perf_counter()
        self.bar = Bar(label, total, unit="episodes") if progress else None
        self.fail_fast = fail_fast
        self.first_errors: list[str] = []
        #: Why the run stops early (the first episodes all failed alike), or None.
        self.aborted: str | None = None

    def turn(self) -> None:
        """One more turn played (in any episode): a long episode still moves the progress line."""
        self.turn_total(self.live_turns + 1)

    def turn_total(self, turns: int) -> None:
        """``turns`` played so far in all episodes (Ray workers count their own; the driver sums them)."""
        self.live_turns = turns
        self._show()

    def record(self, group: list[Trajectory]) -> bool:
        """Write one episode's rows (one per seat); False when it failed."""
        self.writer.write(*group)
        self.written += 1
        self.turns += group[0].turns
        failed = bool(group[0].error)
        if failed:
            self.errors += 1
        else:
            self.ok += 1
            self.reward += sum(t.reward for t in group) / len(group)
        self._watch(group[0].error)
        self._show(advance=1)
        return not failed

    def _show(self, advance: int = 0) -> None:
        if self.bar:
            reward = self.mean_reward if self.ok else None
            self.bar.update(advance=advance, reward=reward, turns=self.live_turns, errors=self.errors)

    def _watch(self, error: str | None) -> None:
        # Only the run's first episodes decide: one success, or two different errors, and it runs to the end.
        if not self.fail_fast or len(self.first_errors) >= self.fail_fast or self.aborted:
            return
        if error is None or (self.first_errors and error != self.first_errors[0]):
            self.fail_fast = 0
            return
        self.first_errors.append(error)
        if len(self.first_errors) == self.fail_fast:
            self.aborted = (
                f"stopped: the first {self.fail_fast} episodes all failed with the same error: {error}"
            )

    @property
    def mean_reward(self) -> float:
        """Mean reward of the episodes that finished without error."""
        return self.reward / self.ok if self.ok else 0.0

    def summary(self, path: str | Path, requested: int, skipped: int) -> RolloutSummary:
        """The run's ``RolloutSummary``."""
        return RolloutSummary(
            path=str(path),
            requested=requested,
            written=self.written,
            skipped=skipped,
            errors=self.errors,
            mean_reward=self.mean_reward,
            duration_s=time.perf_counter() - self.start,
            turns=self.turns,
            retried=self.retried,
        )
