"""Trajectories and their JSONL store: one JSON object per finished episode, crash-safe and resumable."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Trajectory:
    """One episode as written to JSONL: the chat, per-turn rewards, outcome and, if it failed, the error."""

    env_id: str
    episode: int
    seed: int | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    reward_components: dict[str, float] = field(default_factory=dict)
    turns: int = 0
    agent: str | None = None
    episode_id: str = ""
    duration_s: float = 0.0
    #: Multi-agent episodes: this row's seat, and how many rows (seats) the episode has.
    agent_id: str | None = None
    num_agents: int = 1

    def to_json(self) -> str:
        """One line of JSON (no newline); non-JSON values in ``info`` are stringified, not dropped."""
        return json.dumps(_jsonable(asdict(self)), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trajectory:
        """Rebuild from a JSONL row, ignoring keys added by later versions."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return repr(value)


def read_trajectories(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a trajectory file; a half-written last line (a killed writer) is skipped."""
    rows, _ = _scan(Path(path))
    return rows


def _complete_episodes(rows: list[dict[str, Any]]) -> dict[int, int]:
    """Episode index -> row count, for episodes that have a row for every seat."""
    counts: dict[int, int] = {}
    seats: dict[int, int] = {}
    for row in rows:
        episode = int(row["episode"])
        counts[episode] = counts.get(episode, 0) + 1
        seats[episode] = int(row.get("num_agents", 1))
    return {e: n for e, n in counts.items() if n >= seats[e]}


def _scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete rows and the byte offset just past the last complete row."""
    rows: list[dict[str, Any]] = []
    good_end = 0
    if not path.exists():
        return rows, 0
    with path.open("rb") as fh:
        offset = 0
        for raw in fh:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # a line without its newline was cut by a crash mid-write
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_end = offset
    return rows, good_end


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one flushed line per episode as soon as it finishes.

    With ``resume=True`` an existing file is kept: a torn last line is cut off and ``done`` holds the episode
    indices already complete, so a run killed with ``kill -9`` continues without losing or repeating one.
    """

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[int] = set()
        if resume:
            rows, good_end = _scan(self.path)
            complete = _complete_episodes(rows)
            if good_end < (self.path.stat().st_size if self.path.exists() else 0) or sum(
                complete.values()
            ) < len(rows):
                # Drop a torn last line and the rows of episodes whose seats were not all written.
                self._rewrite(rows, complete)
            self.done = {int(r["episode"]) for r in rows if int(r["episode"]) in complete}
            self._fh = self.path.open("a", encoding="utf-8")
        else:
            self._fh = self.path.open("w", encoding="utf-8")

    def _rewrite(self, rows: list[dict[str, Any]], complete: dict[int, int]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                if int(row["episode"]) in complete:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, *trajectories: Trajectory) -> None:
        """Write trajectories (all seats of one episode) as lines, handed to the OS before returning."""
        # One write call per episode keeps its lines together; flush so a kill -9 loses at most the episode
        # in flight, which resume detects (torn line, or fewer rows than seats) and redoes.
        self._fh.write("".join(t.to_json() + "\n" for t in trajectories))
        self._fh.flush()
        self.done.update(t.episode for t in trajectories)

    def close(self) -> None:
        """Flush to disk and close the file."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
