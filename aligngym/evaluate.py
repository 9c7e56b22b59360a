"""``aligngym eval``: play every env x model through the one rollout engine, then score the rows.

Each env x model is one ``rollout`` run with ``samples_per_prompt = K``: task ``t`` (env seed ``seed + t``) is
played K times, and its trajectories are kept in ``OUT/trajectories/`` (viewable, reverifiable). The rows are
then scored per task (a task is a prompt, and for multi-agent envs a seat of it): mean reward with a 95 %
t-interval over the per-task means, unbiased pass@k and pass^k for k <= K (``eval_stats``), error counts.

Success is the env's own (``success_component``); for an env without one, pass@k is reported as not defined
unless an explicit reward threshold is given. An errored sample counts as a failure in pass@k and pass^k, and
is left out of the mean reward (it has no reward); ``errors`` says how many there were.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngym.agents.base import Agent
from aligngym.envs.registry import make

from .eval_stats import pass_at_k, pass_hat_k, t_interval
from .rollout import rollout
from .trajectory import read_trajectories

#: Where the trajectories of an eval go, under its output folder.
TRAJECTORY_DIR = "trajectories"


@dataclass
class TaskScore:
    """One task of one env x model: its samples, successes and mean reward."""

    task: int
    seed: int | None
    seat: str | None
    samples: int
    errors: int
    #: Samples that succeeded (errored ones never do); None where success is not defined.
    successes: int | None
    #: Mean reward of the samples that finished without error; None when all failed.
    mean_reward: float | None


@dataclass
class CellResult:
    """The scores of one env x model."""

    env_id: str
    model: str
    trajectories: str
    samples: int
    episodes: int
    errors: int
    #: What counts as success: the env's component, a reward threshold, or None (pass@k not defined).
    success: str | None
    mean_reward: float | None
    ci95: tuple[float, float] | None
    #: k -> unbiased pass@k / pass^k over the tasks; None where success is not defined.
    pass_at_k: dict[int, float] | None
    pass_hat_k: dict[int, float] | None
    tasks: list[TaskScore] = field(default_factory=list)
    note: str = ""


@dataclass
class SuccessRule:
    """How a row's success is read: the env's ``success_component``, else ``reward >= threshold``, else none."""

    component: str | None
    threshold: float | None = None

    @property
    def describe(self) -> str | None:
        """The rule in words, for reports; None when success is not defined."""
        if self.component:
            return f"env component {self.component!r} reaches 1"
        if self.threshold is not None:
            return f"reward >= {self.threshold:g} (--success-threshold)"
        return None

    def __call__(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` succeeded (an errored row never does)."""
        if row.get("error"):
            return False
        if self.component:
            return bool(row.get("success"))
        return self.threshold is not None and float(row["reward"]) >= self.threshold


def success_rule(env_id: str, env_kwargs: Mapping[str, Any], threshold: float | None = None) -> SuccessRule:
    """The env's own success notion, else the explicit ``threshold`` on reward (or no notion at all)."""
    env = make(env_id, **env_kwargs)
    try:
        component = getattr(getattr(env, "unwrapped", env), "success_component", None)
    finally:
        env.close()
    return SuccessRule(component, None if component else threshold)


def score_rows(rows: list[dict[str, Any]], samples: int, rule: SuccessRule) -> dict[str, Any]:
    """Per-task scores and their aggregates for the (decoded) rows of one env x model."""
    by_task: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_task[(int(row["prompt_index"]), row.get("agent_id") or "")].append(row)
    defined = rule.describe is not None
    tasks = []
    for (task, seat), group in sorted(by_task.items()):
        ok = [float(r["reward"]) for r in group if not r.get("error")]
        tasks.append(
            TaskScore(
                task=task,
                seed=group[0].get("seed"),
                seat=seat or None,
                samples=len(group),
                errors=len(group) - len(ok),
                successes=sum(map(rule, group)) if defined else None,
                mean_reward=statistics.fmean(ok) if ok else None,
            )
        )
    means = [t.mean_reward for t in tasks if t.mean_reward is not None]
    ci = t_interval(means)
    return {
        "tasks": tasks,
        "errors": sum(t.errors for t in tasks),
        "mean_reward": statistics.fmean(means) if means else None,
        "ci95": ci,
        "pass_at_k": _over_tasks(tasks, samples, pass_at_k) if defined else None,
        "pass_hat_k": _over_tasks(tasks, samples, pass_hat_k) if defined else None,
    }


def _over_tasks(tasks: list[TaskScore], samples: int, estimator) -> dict[int, float]:
    """k -> the estimator's mean over the tasks with at least k samples, for k = 1..``samples``."""
    out = {}
    for k in range(1, samples + 1):
        values = [estimator(t.samples, t.successes, k) for t in tasks if t.samples >= k]
        if values:
            out[k] = statistics.fmean(values)
    return out


def slug(text: str) -> str:
    """``text`` as a file-name part: ``aligngym/Arithmetic-v0`` -> ``aligngym_Arithmetic-v0``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def trajectory_path(out_dir: str | Path, env_id: str, model: str) -> Path:
    """Where one env x model's trajectories go."""
    return Path(out_dir) / TRAJECTORY_DIR / f"{slug(env_id)}__{slug(model)}.jsonl"


async def evaluate(
    env_ids: list[str],
    models: Mapping[str, Agent],
    *,
    tasks: int,
    samples: int,
    out_dir: str | Path,
    env_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    sampling_seed: int | None = None,
    concurrency: int = 8,
    success_threshold: float | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[CellResult]:
    """Play ``tasks`` tasks x ``samples`` samples of every env with every model (label -> agent) and score them.

    ``env_kwargs`` maps an env id to its arguments. A model plays every seat of a multi-agent env. Results come
    in env-major order (every model of the first env, then the next env).
    """
    if tasks < 1 or samples < 1:
        raise ValueError("tasks and samples must be >= 1")
    results = []
    for env_id in env_ids:
        kwargs = dict((env_kwargs or {}).get(env_id, {}))
        rule = success_rule(env_id, kwargs, success_threshold)
        for label, agent in models.items():
            path = trajectory_path(out_dir, env_id, label)
            await rollout(
                env_id,
                agent,
                episodes=tasks,
                samples_per_prompt=samples,
                out=path,
                concurrency=concurrency,
                env_kwargs=kwargs,
                seed=seed,
                sampling_seed=sampling_seed,
                resume=resume,
                progress=progress,
                label=f"{env_id} | {label}",
            )
            # A resumed run may hold more tasks than asked now: score the ones asked for.
            rows = [r for r in read_trajectories(path) if r["prompt_index"] < tasks]
            results.append(cell(env_id, label, path, rows, samples, rule))
    return results


def cell(
    env_id: str, model: str, path: str | Path, rows: list[dict[str, Any]], samples: int, rule: SuccessRule
) -> CellResult:
    """The ``CellResult`` of one env x model's rows."""
    scores = score_rows(rows, samples, rule)
    note = ""
    if rule.describe is None:
        note = (
            f"pass@k not defined: {env_id} has no notion of success; pass --success-threshold R to count "
            "reward >= R as one"
        )
    return CellResult(
        env_id=env_id,
        model=model,
        trajectories=str(path),
        samples=samples,
        episodes=len({(r["episode"]) for r in rows}),
        success=rule.describe,
        note=note,
        **scores,
    )
