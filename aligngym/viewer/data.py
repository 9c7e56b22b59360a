"""What the report shows: trajectory rows made page-ready, grouped into episodes, paired across two runs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: Row fields the page never shows: token ids dwarf the chat, env kwargs are the run's, not the episode's.
DROPPED_FIELDS = ("tokens", "env_kwargs")
#: Where a row says which sample of its prompt it is (``rollout --samples-per-prompt``).
SAMPLE_KEY = "sample_index"

Row = dict[str, Any]
Item = dict[str, Any]


def clean(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``: Python's json reads NaN, the browser's JSON cannot."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _hashable(value: Any) -> Any:
    """``value`` usable in a key: a field a file got wrong (a list for a seed) must not crash the report."""
    return value if value is None or isinstance(value, str | int | float) else repr(value)


def view_row(row: Row) -> Row:
    """A row as the page gets it: every field but the heavy ones, JSON-safe."""
    return clean({k: v for k, v in row.items() if k not in DROPPED_FIELDS})


def sample_index(row: Row) -> int | None:
    """The row's sample number within its prompt (``rollout --samples-per-prompt``), when it has one."""
    value = row.get(SAMPLE_KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def shown_sample(row: Row) -> int | None:
    """The sample number worth showing: only runs that sampled a prompt several times have one."""
    sample = sample_index(row)
    several = isinstance(row.get("samples_per_prompt"), int) and row["samples_per_prompt"] > 1
    return sample if sample is not None and (sample or several) else None


def _reward(row: Row) -> float | None:
    value = row.get("reward")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return clean(float(value))
    except OverflowError:  # an int too large for a float
        return None


def side_summary(rows: Sequence[Row]) -> tuple[float | None, bool, bool | None]:
    """(mean reward, any error, success) of one side's seats; success only when every seat agrees."""
    rewards = [r for r in map(_reward, rows) if r is not None]
    mean = clean(sum(rewards) / len(rewards)) if rewards else None
    outcomes = {row.get("success") if isinstance(row.get("success"), bool) else None for row in rows}
    success = outcomes.pop() if len(outcomes) == 1 else None
    return mean, any(row.get("error") for row in rows), success


def _item(seats: list[tuple[str | None, list[Row | None]]], sides: int, **key: Any) -> Item:
    """An entry of the page: seats with one row per side, and per side the summary filters and sorts use."""
    item: Item = dict(key)
    item["seats"] = [{"seat": seat, "rows": rows} for seat, rows in seats]
    summaries = [side_summary([r[s] for _, r in seats if r[s] is not None]) for s in range(sides)]
    item["reward"] = [s[0] for s in summaries]
    item["error"] = [s[1] for s in summaries]
    item["success"] = [s[2] for s in summaries]
    return item


def group_episodes(rows: Iterable[Row]) -> list[Item]:
    """One item per episode, in file order: a multi-agent episode's rows (linked by ``episode_id``) together."""
    groups: dict[tuple[str, Any], list[Row]] = {}
    for row in rows:
        # Rows from before episode ids existed: the episode index is the link between seats.
        key = (
            ("id", _hashable(row["episode_id"])) if row.get("episode_id") else ("episode", row.get("episode"))
        )
        groups.setdefault(key, []).append(view_row(row))
    items = []
    for members in groups.values():
        first = members[0]
        items.append(
            _item(
                [(m.get("agent_id"), [m]) for m in members],
                1,
                env=first.get("env_id"),
                seed=first.get("seed"),
                episode=first.get("episode"),
                episode_id=first.get("episode_id"),
                sample=shown_sample(first),
            )
        )
    return items


#: (env_id, seed, seat, sample, repeat): what a row of one run pairs on with its counterpart in the other.
PairKey = tuple[Any, Any, Any, Any, int]


def keyed_rows(rows: Iterable[Row]) -> dict[PairKey, Row]:
    """Rows by their pair key, in file order.

    ``repeat`` counts earlier rows with the same (env_id, seed, seat, sample): a seed played twice without a
    sample number (two runs in one file) pairs its n-th play with the other run's n-th.
    """
    keyed: dict[PairKey, Row] = {}
    seen: dict[tuple[Any, Any, Any, Any], int] = {}
    for row in rows:
        base = tuple(
            map(_hashable, (row.get("env_id"), row.get("seed"), row.get("agent_id"), sample_index(row)))
        )
        repeat = seen.get(base, 0)
        seen[base] = repeat + 1
        keyed[(*base, repeat)] = view_row(row)
    return keyed


def match_status(seats: list[tuple[str | None, list[Row | None]]]) -> str:
    """``both`` when every seat has a row on each side, ``a`` / ``b`` when only one run has it, else ``partial``."""
    has = {side for _, rows in seats for side in (0, 1) if rows[side] is not None}
    if all(rows[0] is not None and rows[1] is not None for _, rows in seats):
        return "both"
    return {frozenset({0}): "a", frozenset({1}): "b"}.get(frozenset(has), "partial")


def pair_runs(rows_a: Iterable[Row], rows_b: Iterable[Row]) -> list[Item]:
    """Items of two runs side by side: the same (env, seed, sample, repeat), each seat's row from A and from B.

    Items follow A's order, then what only B has in B's order; unmatched items keep an empty side.
    """
    a, b = keyed_rows(rows_a), keyed_rows(rows_b)
    episodes: dict[tuple[Any, Any, Any, int], list[tuple[str | None, list[Row | None]]]] = {}
    for key in [*a, *(k for k in b if k not in a)]:
        env_id, seed, seat, sample, repeat = key
        episodes.setdefault((env_id, seed, sample, repeat), []).append((seat, [a.get(key), b.get(key)]))
    items = []
    for (env_id, seed, _, repeat), seats in episodes.items():
        first = next(row for _, rows in seats for row in rows if row is not None)
        shown = dict(env=env_id, seed=seed, sample=shown_sample(first), repeat=repeat)
        items.append(_item(seats, 2, **shown, match=match_status(seats)))
    return items


def file_summary(name: str, rows: Sequence[Row]) -> dict[str, Any]:
    """Per env of one file: rows, mean reward, errors and success rate (over rows that have an outcome)."""
    envs: dict[str, list[Row]] = {}
    for row in rows:
        envs.setdefault(str(row.get("env_id")), []).append(row)
    table = []
    for env_id, members in envs.items():
        rewards = [r for r in map(_reward, members) if r is not None]
        outcomes = [row["success"] for row in members if isinstance(row.get("success"), bool)]
        table.append(
            {
                "env": env_id,
                "rows": len(members),
                "mean_reward": clean(sum(rewards) / len(rewards)) if rewards else None,
                "errors": sum(1 for row in members if row.get("error")),
                "success_rate": sum(outcomes) / len(outcomes) if outcomes else None,
            }
        )
    return {"file": name, "rows": len(rows), "envs": table}
