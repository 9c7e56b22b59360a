"""The rollout loop: N episodes, K at a time on one asyncio loop, each written to JSONL when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligngym.agents.base import Agent
from aligngym.envs.registry import make

from .trajectory import RunKey, Trajectory, TrajectoryWriter

#: Hard stop for environments whose episodes never end, so one bad env cannot hang a run.
MAX_TURNS_GUARD = 1000


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
    """Play one episode; any exception becomes the trajectory's ``error`` instead of propagating.

    ``on_turn`` is called after every turn (the progress bar counts turns with it).
    """
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
            tools = getattr(env, "tool_schemas", None)
            response = await (agent.act(traj.messages, tools=tools) if tools else agent.act(traj.messages))
            action = _action(response)
            step = await astep(action) if astep else env.step(action)
            _, reward, terminated, truncated, info = step
            traj.turns += 1
            if on_turn:
                on_turn()
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


async def play_multi_agent_episode(
    env: Any,
    seats: dict[str, Agent],
    env_id: str,
    episode: int,
    seed: int | None,
    on_turn: Callable[[], None] | None = None,
) -> list[Trajectory]:
    """Play one multi-agent episode; returns one trajectory per seat, linked by ``episode_id``."""
    episode_id = uuid.uuid4().hex
    start = time.perf_counter()
    trajs = {
        seat: Trajectory(
            env_id=env_id,
            episode=episode,
            seed=seed,
            agent=agent.name,
            episode_id=episode_id,
            agent_id=seat,
            num_agents=len(seats),
        )
        for seat, agent in seats.items()
    }
    infos: dict[str, dict[str, Any]] = {}
    error = None
    try:
        _, infos = env.reset(seed=seed)
        for seat, traj in trajs.items():
            traj.messages = infos[seat]["messages"]
        rounds = 0
        while env.agents:
            if rounds >= MAX_TURNS_GUARD:
                raise RuntimeError(f"episode did not end within {MAX_TURNS_GUARD} rounds")
            live = list(env.agents)
            replies = await asyncio.gather(*(seats[a].act(trajs[a].messages) for a in live))
            step = env.astep if hasattr(env, "astep") else None
            actions = {a: r.text for a, r in zip(live, replies, strict=True)}
            _, rewards, terminations, truncations, step_infos = (
                await step(actions) if step else env.step(actions)
            )
            rounds += 1
            if on_turn:
                on_turn()
            for a in live:
                traj = trajs[a]
                traj.turns += 1
                traj.rewards.append(float(rewards.get(a, 0.0)))
                infos[a] = step_infos.get(a, infos.get(a, {}))
                traj.messages = infos[a].get("messages", traj.messages)
                traj.terminated = bool(terminations.get(a, False))
                traj.truncated = bool(truncations.get(a, False))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".strip()
    duration = time.perf_counter() - start
    for seat, traj in trajs.items():
        info = infos.get(seat, {})
        traj.error = error
        traj.reward = sum(traj.rewards)
        traj.reward_components = dict(info.get("reward_components", {}))
        traj.info = {k: v for k, v in info.items() if k not in ("messages", "reward_components")}
        traj.duration_s = duration
    return list(trajs.values())


def seat_agents(env: Any, agent: Agent | dict[str, Agent]) -> dict[str, Agent]:
    """Map every seat of a multi-agent env to a policy: one policy for all (self-play) or one per seat."""
    seats = list(env.possible_agents)
    if not isinstance(agent, dict):
        return dict.fromkeys(seats, agent)
    missing = [s for s in seats if s not in agent]
    unknown = [s for s in agent if s not in seats]
    if missing or unknown:
        raise ValueError(f"seat map must name each of {seats}; missing {missing}, unknown {unknown}")
    return dict(agent)


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
) -> RolloutSummary:
    """Run ``episodes`` episodes of ``env_id``; episode ``i`` uses seed ``seed + i``.

    ``agent`` is one policy, or for multi-agent envs a ``{seat: policy}`` map; multi-agent episodes write one
    row per seat, linked by ``episode_id``. When the first ``fail_fast`` episodes (0: never) all fail with the
    same error, no more start and ``RolloutAborted`` is raised (their rows are written).
    """
    env_kwargs = env_kwargs or {}
    if episodes < 0 or concurrency < 1:
        raise ValueError("episodes must be >= 0 and concurrency >= 1")
    first_env = _unwrapped(make(env_id, **env_kwargs))  # bad env ids and kwargs fail here, before any work
    multi = hasattr(first_env, "possible_agents")
    seats = seat_agents(first_env, agent) if multi else None
    if not multi and isinstance(agent, dict):
        raise ValueError(f"{env_id} is single-agent: pass one agent, not a seat map")
    writer = TrajectoryWriter(out, resume=resume, run=RunKey(env_id, seed, env_kwargs))
    todo = [i for i in range(episodes) if i not in writer.done]
    skipped = episodes - len(todo)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in todo:
        queue.put_nowait(i)
    tally = Tally(writer, len(todo), env_id, progress, fail_fast=fail_fast)
    spare = [first_env]

    async def worker() -> None:
        env = spare.pop() if spare else _unwrapped(make(env_id, **env_kwargs))
        try:
            while not queue.empty() and tally.aborted is None:
                i = queue.get_nowait()
                if multi:
                    group = await play_multi_agent_episode(env, seats, env_id, i, seed + i, tally.turn)
                else:
                    group = [await play_episode(env, agent, env_id, i, seed + i, tally.turn)]
                if not tally.record(group):
                    # The env may be mid-episode in an unknown state; a fresh one is cheap insurance.
                    with contextlib.suppress(Exception):
                        env.close()
                    env = _unwrapped(make(env_id, **env_kwargs))
        finally:
            with contextlib.suppress(Exception):
                env.close()

    try:
        if tally.bar:
            tally.bar.start()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    finally:
        if tally.bar:
            tally.bar.stop()
        writer.close()
    if tally.aborted is not None:
        raise RolloutAborted(tally.aborted)
    return tally.summary(out, episodes, skipped)


def _action(response: Any) -> str | dict[str, Any]:
    """What the env receives: the text, or the whole assistant message when the model made native tool calls."""
    if getattr(response, "tool_calls", None):
        return {"role": "assistant", "content": response.text, "tool_calls": response.tool_calls}
    return response.text


def _unwrapped(env: Any) -> Any:
    # Gymnasium wrappers hide ``astep``; PettingZoo envs from our registry are not wrapped.
    return getattr(env, "unwrapped", env)


class Tally:
    """Writes finished episodes and keeps the counts a run reports (and shows on its progress bar)."""

    def __init__(self, writer: TrajectoryWriter, total: int, label: str, progress: bool, fail_fast: int = 0):
        self.writer = writer
        self.written = self.errors = self.ok = self.turns = self.retried = 0
        self.live_turns = 0
        self.reward = 0.0
        self.start = time.perf_counter()
        self.bar = _Progress(total, label) if progress else None
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
        if self.bar:
            self.bar.turn(turns)

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
        if self.bar:
            self.bar.advance(self.mean_reward, self.errors)
        return not failed

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


class _Progress:
    """A rich progress bar showing episodes done, mean reward and errors."""

    def __init__(self, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "turns {task.fields[turns]}  reward {task.fields[reward]:.3f}  errors {task.fields[errors]}"
            ),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(label, total=total, reward=0.0, errors=0, turns=0)

    def start(self) -> None:
        self.progress.start()

    def turn(self, turns: int) -> None:
        self.progress.update(self.task, turns=turns)

    def advance(self, mean_reward: float, errors: int) -> None:
        self.progress.update(self.task, advance=1, reward=mean_reward, errors=errors)

    def stop(self) -> None:
        self.progress.stop()
