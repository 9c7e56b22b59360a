"""Rollouts on Ray: env instances and their agents live in actors; the driver writes the JSONL.

Each actor plays episodes (``run_episode`` on an ``EnvPool``, the same code as a local run) and
returns trajectories; the driver keeps a bounded number in flight (back-pressure), writes each episode when
it returns, and re-queues the episodes of an actor that died on a fresh actor. Episode ``i`` always has the
seeds ``rollout.episode_seeds`` gives it (env seed ``seed + i // N``), so a retried episode is the same episode
and ``--resume`` works unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .rollout import RolloutAborted, RolloutSummary, Tally, episode_seeds
from .trajectory import RunKey, Trajectory, TrajectoryWriter

#: Seconds between two reads of the actors' turn counters for the progress line.
TURNS_POLL_S = 0.5
#: Attempts per episode before it is written as failed (a worker that keeps dying takes it down with it).
MAX_ATTEMPTS = 3


class _Worker:
    """The actor body: builds its agent(s) from a spec and plays episodes concurrently on its own loop."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        agent_spec: dict[str, Any],
        quota: Any = None,
        name: str = "",
    ):
        from aligngym.agents.factory import build_agent
        from aligngym.episode import EnvPool

        if quota is not None:  # before any sandbox exists, so every one of them holds a ticket
            from aligngym.sandboxes.cap import set_cluster_gate
            from aligngym.sandboxes.quota import RayQuotaGate

            set_cluster_gate(RayQuotaGate(quota, name))

        self._envs = EnvPool(env_id, env_kwargs)
        seats = agent_spec.get("seats")
        if seats:
            built = {
                name: build_agent(**spec) for name, spec in {s["model"]: s for s in seats.values()}.items()
            }
            self.agent: Any = {seat: built[spec["model"]] for seat, spec in seats.items()}
        else:
            self.agent = build_agent(**agent_spec)
        self._turns = 0

    def _turn(self) -> None:
        self._turns += 1

    def turns(self) -> int:
        """Turns played so far by this actor, in all its episodes (the driver's progress line shows them)."""
        return self._turns

    async def play(self, episode: int, seed: int, sampling_seed: int | None = None) -> list[dict[str, Any]]:
        """One episode (``run_episode``, as a local run plays it); its trajectories, one per seat, as dicts."""
        group = await self._envs.play(self.agent, episode, seed, self._turn, sampling_seed=sampling_seed)
        return [asdict(t) for t in group]

    def pid(self) -> int:
        """The actor's process id (for tests and diagnostics)."""
        import os

        return os.getpid()


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` ('auto' or HOST:PORT), or start a local instance for None.

    None means "local" explicitly: Ray's own default would join whatever cluster ``ray start`` last ran on
    this machine (even a dead one). A cluster that cannot be reached raises ``ConnectionError``.
    """
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)  # Ray itself would retry a wrong address for minutes
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"not a HOST:PORT address: {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc})") from None


async def rollout_ray(
    env_id: str,
    agent_spec: dict[str, Any],
    *,
    episodes: int,
    out: str | Path,
    workers: int,
    concurrency: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    ray_address: str | None = None,
    name_prefix: str | None = None,
    max_sandboxes: int | None = None,
    fail_fast: int = 0,
    samples_per_prompt: int = 1,
    sampling_seed: int | None = None,
) -> RolloutSummary:
    """Run ``episodes`` prompts, each ``samples_per_prompt`` times, across ``workers`` Ray actors
    (``concurrency`` episodes in flight per actor); episodes, seeds and rows as in ``rollout``.

    ``max_sandboxes`` caps the sandboxes live at once across all workers (a ``SandboxQuota`` actor); each
    worker's own process-wide cap (``ALIGNGYM_MAX_SANDBOXES``) still applies too. ``fail_fast`` as in
    ``rollout``: when the first ``fail_fast`` episodes all fail alike, no more start (``RolloutAborted``).
    """
    import ray

    if max_sandboxes is not None and (not isinstance(max_sandboxes, int) or max_sandboxes < 1):
        raise ValueError(f"max_sandboxes must be an integer >= 1, got {max_sandboxes!r}")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt!r}")
    connect_ray(ray_address)
    env_kwargs = env_kwargs or {}
    prefix = name_prefix or f"aligngym-{uuid.uuid4().hex[:8]}"
    remote = ray.remote(_Worker)
    spawned = iter(range(10**9))
    quota = None
    if max_sandboxes is not None:
        from aligngym.sandboxes.quota import SandboxQuota

        quota = ray.remote(SandboxQuota).options(name=f"{prefix}-quota").remote(max_sandboxes)
    actors: list[Any] = [None] * workers
    names = [""] * workers

    def spawn(index: int) -> None:
        """Start (or restart) actor ``index`` under a name no actor had before."""
        names[index] = f"{prefix}-{next(spawned)}"
        # One call more than the episodes in flight: the progress line's turn count never waits for a slot.
        options = {"name": names[index], "max_concurrency": concurrency + 1, "max_restarts": 0}
        actors[index] = remote.options(**options).remote(env_id, env_kwargs, agent_spec, quota, names[index])

    for index in range(workers):
        spawn(index)
    writer = TrajectoryWriter(out, resume=resume, run=RunKey(env_id, seed, env_kwargs, samples_per_prompt))
    total = episodes * samples_per_prompt
    todo = [i for i in range(total) if i not in writer.done]
    skipped = total - len(todo)
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for i in todo:
        queue.put_nowait((i, 1))
    tally = Tally(writer, len(todo), f"{env_id} x{workers} workers", progress, fail_fast=fail_fast)
    remaining = len(todo)
    done = asyncio.Event()
    if not remaining:
        done.set()

    def record(rows: list[dict[str, Any]]) -> None:
        nonlocal remaining
        tally.record([Trajectory.from_dict(r) for r in rows])
        remaining -= 1
        if remaining == 0 or tally.aborted is not None:
            done.set()

    turns_seen: dict[str, int] = {}  # actor name -> its turn count when last asked (kept when it dies)

    async def count_turns() -> None:
        replies = [(names[i], actor.turns.remote()) for i, actor in enumerate(actors)]
        for name, reply in replies:
            with contextlib.suppress(ray.exceptions.RayError):
                turns_seen[name] = await reply
        tally.turn_total(sum(turns_seen.values()))

    async def show_turns() -> None:
        while not done.is_set():
            await count_turns()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), TURNS_POLL_S)

    async def slot(index: int) -> None:
        # One of `concurrency` lanes on actor `index`: at most workers * concurrency episodes in flight.
        while not done.is_set() and tally.aborted is None:
            try:
                episode, attempt = await asyncio.wait_for(queue.get(), timeout=0.2)
            except TimeoutError:
                continue
            actor = actors[index]
            env_seed, episode_sampling = episode_seeds(episode, seed, samples_per_prompt, sampling_seed)
            try:
                rows = await actor.play.remote(episode, env_seed, episode_sampling)
            except ray.exceptions.RayActorError as exc:
                tally.retried += 1
                if actors[index] is actor:  # the first lane to notice replaces the dead actor
                    if quota is not None:  # its sandboxes died with it
                        quota.forget.remote(names[index])
                    spawn(index)
                if attempt < MAX_ATTEMPTS:
                    queue.put_nowait((episode, attempt + 1))
                else:
                    failed = Trajectory(
                        env_id=env_id,
                        episode=episode,
                        seed=env_seed,
                        error=f"worker died {attempt} times: {type(exc).__name__}",
                    )
                    record([asdict(failed)])
                continue
            record(rows)

    peak = None
    try:
        if tally.bar:
            tally.bar.start()
        lanes = [asyncio.create_task(slot(w)) for w in range(workers) for _ in range(concurrency)]
        if tally.bar:
            lanes.append(asyncio.create_task(show_turns()))
        await done.wait()
        if tally.bar:
            await count_turns()  # the last line shows every turn played
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        if quota is not None:
            peak = (await quota.stats.remote())["peak"]
    finally:
        if tally.bar:
            tally.bar.stop()
        writer.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if quota is not None:
            ray.kill(quota, no_restart=True)
    if tally.aborted is not None:
        raise RolloutAborted(tally.aborted)
    return dataclasses.replace(tally.summary(out, total, skipped), sandboxes_peak=peak)
