"""Re-score stored rollouts with today's env and grader (``aligngym eval --reverify TRAJ.jsonl``).

Graders get fixed; an old run should be re-judgeable without sampling again. Each stored episode is played
again through ``run_episode`` on a fresh env built from the row's env id, env arguments and seed, with a
``ReplayAgent`` that returns the stored assistant messages in order (multi-agent rows are grouped by
``episode_id``, one replay agent per seat). The new reward and success are compared with the stored ones.

A replay *diverged* when the env's chat no longer matches the stored one (an observation or tool result
changed, the episode ended earlier or wants more turns than were stored): the stored actions then answer a
conversation that did not happen, and the new score is flagged rather than trusted. Rows that failed with an
error were never scored and are carried over as they are.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aligngym.agents.scripted import ReplayAgent

from .episode import EnvPool
from .rows import encode_message
from .trajectory import Trajectory, TrajectoryWriter, read_trajectories


@dataclass
class Rescore:
    """One row re-scored: its old and new reward and success, and whether its replay diverged."""

    episode: int
    agent_id: str | None
    old_reward: float
    new_reward: float | None
    old_success: bool | None
    new_success: bool | None
    changed: bool
    #: How the replayed chat differs from the stored one (None: identical).
    diverged: str | None = None
    #: Why the row was not re-scored (the stored episode had failed, or its seats are incomplete).
    skipped: str | None = None


@dataclass
class ReverifyReport:
    """What a reverify run found."""

    source: str
    reverified: str
    rows: list[Rescore] = field(default_factory=list)

    @property
    def rescored(self) -> list[Rescore]:
        """The rows that were played again."""
        return [r for r in self.rows if r.skipped is None]

    @property
    def changed(self) -> list[Rescore]:
        """The re-scored rows whose reward or success changed."""
        return [r for r in self.rescored if r.changed]

    @property
    def diverged(self) -> list[Rescore]:
        """The re-scored rows whose replay no longer matches the stored chat."""
        return [r for r in self.rescored if r.diverged]

    def summary(self) -> dict[str, Any]:
        """The counts and means (over re-scored rows), for the report and the console."""
        rescored = self.rescored
        before = [r.old_reward for r in rescored]
        after = [r.new_reward for r in rescored if r.new_reward is not None]
        return {
            "source": self.source,
            "reverified": self.reverified,
            "rows": len(self.rows),
            "rescored": len(rescored),
            "skipped": len(self.rows) - len(rescored),
            "changed": len(self.changed),
            "diverged": len(self.diverged),
            "mean_reward_before": statistics.fmean(before) if before else None,
            "mean_reward_after": statistics.fmean(after) if after else None,
        }

    def to_json(self) -> str:
        """The report file: the summary and every row."""
        return json.dumps({**self.summary(), "episodes": [asdict(r) for r in self.rows]}, indent=2) + "\n"


def first_difference(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str | None:
    """Where the replayed chat ``new`` first differs from the stored ``old`` (None when they are the same)."""
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if encode_message(a) != encode_message(b):
            return f"message {i} ({a.get('role')}) differs"
    if len(old) != len(new):
        return f"the replay has {len(new)} messages, the stored episode {len(old)}"
    return None


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by episode: a multi-agent episode's seats together, in file order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        key = row.get("episode_id") if row.get("num_agents", 1) > 1 and row.get("episode_id") else f"#{i}"
        groups.setdefault(key, []).append(row)
    return list(groups.values())


async def _replay(pools: dict[str, EnvPool], group: list[dict[str, Any]]) -> list[Trajectory] | str:
    """Play ``group``'s episode again with its stored replies; the new rows, or why it cannot be replayed."""
    first = group[0]
    if any(r.get("error") for r in group):
        return f"the stored episode failed: {first['error'] or group[-1]['error']}"
    if len(group) < first.get("num_agents", 1):
        return f"{len(group)} of the episode's {first['num_agents']} seats are in the file"
    kwargs = first.get("env_kwargs") or {}
    key = json.dumps([first["env_id"], kwargs], sort_keys=True)
    pool = pools.setdefault(key, EnvPool(first["env_id"], kwargs))
    if first.get("num_agents", 1) > 1:
        policy: Any = {r["agent_id"]: ReplayAgent(r["messages"], r.get("agent") or "replay") for r in group}
    else:
        policy = ReplayAgent(first["messages"], name=first.get("agent") or "replay")
    return await pool.play(policy, int(first["episode"]), first.get("seed"))


def _compare(old: dict[str, Any], new: Trajectory) -> Rescore:
    if new.error:
        diverged: str | None = f"the replay failed: {new.error}"
    else:
        diverged = first_difference(old["messages"], new.messages)
    old_reward = float(old["reward"])
    new_reward = None if new.error else new.reward
    same = (
        new_reward is not None and abs(new_reward - old_reward) <= 1e-9 and new.success == old.get("success")
    )
    return Rescore(
        episode=int(old["episode"]),
        agent_id=old.get("agent_id"),
        old_reward=old_reward,
        new_reward=new_reward,
        old_success=old.get("success"),
        new_success=new.success,
        changed=not same,
        diverged=diverged,
    )


async def reverify(path: str | Path, out: str | Path, concurrency: int = 8) -> ReverifyReport:
    """Re-score every row of ``path``; write the re-scored rows (same order, same format) to ``out``."""
    rows = read_trajectories(path)
    groups = _groups(rows)
    pools: dict[str, EnvPool] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(group: list[dict[str, Any]]) -> list[Trajectory] | str:
        async with gate:
            return await _replay(pools, group)

    try:
        outcomes = await asyncio.gather(*(one(g) for g in groups))
    finally:
        for pool in pools.values():
            pool.close()
    report = ReverifyReport(source=str(path), reverified=str(out))
    with TrajectoryWriter(out) as writer:
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, str):
                writer.write(*(Trajectory.from_dict(r) for r in group))
                report.rows += [_skipped(r, outcome) for r in group]
                continue
            by_seat = {t.agent_id: t for t in outcome}
            news = [by_seat[old.get("agent_id")] for old in group]
            for old, new in zip(group, news, strict=True):
                _keep_identity(new, old)
                report.rows.append(_compare(old, new))
            writer.write(*news)
    return report


def _keep_identity(new: Trajectory, old: dict[str, Any]) -> None:
    """The re-scored row stays the stored one's: same run settings, prompt and sample, same agent name."""
    new.env_kwargs = old.get("env_kwargs") or {}
    new.prompt_index, new.sample_index = old["prompt_index"], old["sample_index"]
    new.samples_per_prompt = old["samples_per_prompt"]
    new.agent = old.get("agent")


def _skipped(row: dict[str, Any], why: str) -> Rescore:
    success, reward = row.get("success"), float(row["reward"])
    return Rescore(int(row["episode"]), row.get("agent_id"), reward, None, success, None, False, skipped=why)
