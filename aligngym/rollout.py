"""The rollout loop: N episodes, K at a time on one asyncio loop, each written to JSONL when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligngym.agents.base import Agent
from aligngym.envs.registry import make

from .trajectory import Trajectory, TrajectoryWriter

#: Hard stop for environments whose episodes never end, so one bad env cannot hang a run.
MAX_TURNS_GUARD = 1000


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

    @property
    def episodes_per_s(self) -> float:
        """Episodes written per second of wall time."""
        return self.written / self.duration_s if self.duration_s else 0.0


async def play_episode(env: Any, agent: Agent, env_id: str, episode: int, seed: int | None) -> Trajectory:
    """Play one episode; any exception becomes the trajectory's ``error`` instead of propagating."""
    traj = Trajectory(
        env_id=env_id, episode=episode, seed=seed, agent=agent.name, episode_id=uuid.uuid4().hex
    )
    start = time.perf_counter()
    astep = getattr(env, "astep", None)
    info: dict[str, Any] = {}
    try:
        _, info = env.reset(seed=seed)
        traj.messages = info.get("messages", [])
        while traj.turns < MAX_TURNS_GUARD:
            response = await agent.act(traj.messages)
            step = await astep(response.text) if astep else env.step(response.text)
            _, reward, terminated, truncated, info = step
            traj.turns += 1
            traj.rewards.append(float(reward))
            traj.messages = info.get("messages", traj.messages)
            if terminated or truncated:
                traj.terminated, traj.truncated = bool(terminated), bool(truncated)
                break
        else:
            raise RuntimeError(
                f"episode did not end within {MAX_TURNS_GUARD} turns; set max_turns on the env"
            )
    except Exception as exc:
        traj.error = f"{type(exc).__name__}: {exc}".strip()
    traj.reward = sum(traj.rewards)
    traj.reward_components = dict(info.get("reward_components", {}))
    traj.info = {k: v for k, v in info.items() if k not in ("messages", "reward_components")}
    traj.duration_s = time.perf_counter() - start
    return traj


async def rollout(
    env_id: str,
    agent: Agent,
    *,
    episodes: int,
    out: str | Path,
    concurrency: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> RolloutSummary:
    """Run ``episodes`` episodes of ``env_id`` with ``agent``; episode ``i`` uses seed ``seed + i``."""
    env_kwargs = env_kwargs or {}
    if episodes < 0 or concurrency < 1:
        raise ValueError("episodes must be >= 0 and concurrency >= 1")
    first_env = make(env_id, **env_kwargs).unwrapped  # bad env ids and kwargs fail here, before any work
    writer = TrajectoryWriter(out, resume=resume)
    todo = [i for i in range(episodes) if i not in writer.done]
    skipped = episodes - len(todo)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in todo:
        queue.put_nowait(i)
    stats = {"written": 0, "errors": 0, "reward": 0.0, "ok": 0, "turns": 0}
    bar = _Progress(len(todo), env_id) if progress else None
    spare = [first_env]

    async def worker() -> None:
        env = spare.pop() if spare else make(env_id, **env_kwargs).unwrapped
        try:
            while not queue.empty():
                i = queue.get_nowait()
                traj = await play_episode(env, agent, env_id, i, seed + i)
                writer.write(traj)
                stats["written"] += 1
                stats["turns"] += traj.turns
                if traj.error:
                    stats["errors"] += 1
                    # The env may be mid-episode in an unknown state; a fresh one is cheap insurance.
                    with contextlib.suppress(Exception):
                        env.close()
                    env = make(env_id, **env_kwargs).unwrapped
                else:
                    stats["ok"] += 1
                    stats["reward"] += traj.reward
                if bar:
                    bar.advance(stats)
        finally:
            with contextlib.suppress(Exception):
                env.close()

    start = time.perf_counter()
    try:
        if bar:
            bar.start()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    finally:
        if bar:
            bar.stop()
        writer.close()
    return RolloutSummary(
        path=str(out),
        requested=episodes,
        written=stats["written"],
        skipped=skipped,
        errors=stats["errors"],
        mean_reward=stats["reward"] / stats["ok"] if stats["ok"] else 0.0,
        duration_s=time.perf_counter() - start,
        turns=stats["turns"],
    )


class _Progress:
    """A rich progress bar showing episodes done, mean reward and errors."""

    def __init__(self, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]:.3f}  errors {task.fields[errors]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(label, total=total, reward=0.0, errors=0)

    def start(self) -> None:
        self.progress.start()

    def advance(self, stats: dict[str, Any]) -> None:
        mean = stats["reward"] / stats["ok"] if stats["ok"] else 0.0
        self.progress.update(self.task, advance=1, reward=mean, errors=stats["errors"])

    def stop(self) -> None:
        self.progress.stop()
