"""Trajectories and their JSONL store: one JSON object per finished episode, crash-safe and resumable."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rows import decode_row, encode_row, is_encoded

if TYPE_CHECKING:
    from aligngym.agents.base import AgentResponse


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
    #: The env arguments of the run that wrote the row, so ``--resume`` can refuse a different run.
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Whether the episode achieved its task: the env's ``success_component`` reached 1 at the end. ``None``
    #: when the env has no notion of success or the episode failed with an error.
    success: bool | None = None
    #: ``--samples-per-prompt N``: episode ``i`` is sample ``i % N`` of prompt ``i // N`` (env seed ``seed +
    #: i // N``). Left out, they are derived from ``episode`` and N.
    prompt_index: int | None = None
    sample_index: int | None = None
    samples_per_prompt: int = 1
    #: Where the env's class comes from: its installed distribution and version (``"aligngym"`` for the
    #: built-ins; ``""`` when no installed distribution provides its module), and the aligngym that ran it.
    env_package: str = ""
    env_package_version: str = ""
    aligngym_version: str = ""
    #: Per assistant turn whose backend said them, the exact tokens: ``{"turn", "prompt_ids",
    #: "completion_ids", "logprobs"}`` (``turn`` 0-based; an unknown list is null). JSON text in the file
    #: (``""`` if none), as ``info`` and ``env_kwargs`` are: see ``aligngym.rows``.
    tokens: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.prompt_index is None:
            self.prompt_index = self.episode // self.samples_per_prompt
        if self.sample_index is None:
            self.sample_index = self.episode % self.samples_per_prompt

    def add_turn_tokens(self, response: AgentResponse, turn: int | None = None) -> None:
        """Keep ``response``'s prompt ids, generated ids and logprobs as turn ``turn`` (default: ``turns``).

        Call it once ``act`` has answered and before ``turns`` counts the turn; a response without generated
        ids (the backend did not say) adds nothing.
        """
        if response.token_ids is None:
            return
        logprobs = response.logprobs
        # One logprob per generated id, or they cannot be told apart: unknown rather than misaligned.
        if logprobs is not None and len(logprobs) != len(response.token_ids):
            logprobs = None
        entry = {
            "turn": self.turns if turn is None else turn,
            "prompt_ids": None if response.prompt_ids is None else list(response.prompt_ids),
            "completion_ids": list(response.token_ids),
            "logprobs": None if logprobs is None else [float(x) for x in logprobs],
        }
        if self.tokens is None:
            self.tokens = []
        self.tokens.append(entry)

    def to_json(self) -> str:
        """One line of JSON (no newline) in the row format of ``aligngym.rows``, the same columns for every env;
        non-JSON values in ``info`` are stringified, not dropped."""
        return json.dumps(encode_row(_jsonable(asdict(self))), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trajectory:
        """Rebuild from a JSONL row (this version's, an earlier one's, or decoded), ignoring keys added later."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in decode_row(row).items() if k in names})


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


class TrajectoryFileError(ValueError):
    """A file that is not a trajectory JSONL, or not one written by the run being resumed."""


@dataclass(frozen=True)
class RunKey:
    """What makes two rollouts the same run: rows of another run must not count as done."""

    env_id: str
    seed: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    samples_per_prompt: int = 1

    def mismatch(self, row: dict[str, Any]) -> str | None:
        """How ``row`` (decoded) differs from this run (``None`` when it belongs to it)."""
        if row.get("env_id") != self.env_id:
            return f"env id {row.get('env_id')!r} (this run: {self.env_id!r})"
        n = row.get("samples_per_prompt", 1)
        if n != self.samples_per_prompt:
            return f"--samples-per-prompt {n} (this run: {self.samples_per_prompt})"
        prompt = int(row["episode"]) // self.samples_per_prompt
        if isinstance(row.get("seed"), int) and row["seed"] - prompt != self.seed:
            return f"--seed {row['seed'] - prompt} (this run: {self.seed})"
        # Rows from before env_kwargs was recorded carry no key: nothing to compare them with.
        wanted = json.loads(json.dumps(_jsonable(self.env_kwargs)))
        if "env_kwargs" in row and row["env_kwargs"] != wanted:
            return f"--env-kwargs {json.dumps(row['env_kwargs'])} (this run: {json.dumps(wanted)})"
        return None

    def stamp(self, traj: Trajectory) -> None:
        """Record this run's settings on ``traj``: its env arguments and which sample of which prompt it is."""
        traj.env_kwargs = self.env_kwargs
        traj.samples_per_prompt = self.samples_per_prompt
        traj.prompt_index, traj.sample_index = divmod(traj.episode, self.samples_per_prompt)


def read_trajectories(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a trajectory file, decoded (``aligngym.rows.decode_row``: ``info`` and
    ``reward_components`` as dicts, ``None`` for what is missing); a half-written last line is skipped.

    Raises ``TrajectoryFileError`` when a line before the last is not a JSON object with an ``episode``.
    """
    rows, _ = _scan(Path(path))
    decoded = []
    for lineno, row in enumerate(rows, 1):
        try:
            decoded.append(decode_row(row))
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
        ) as exc:  # a field in no form rows are written in
            raise TrajectoryFileError(
                f"{str(path)!r} line {lineno}: a field cannot be read ({type(exc).__name__}: {exc}); "
                "is it the output of `aligngym rollout`?"
            ) from None
    return decoded


def check_resumable(path: str | Path, run: RunKey) -> None:
    """Raise ``TrajectoryFileError`` unless every row of ``path`` (if it exists) was written by ``run``."""
    for row in read_trajectories(path):
        why = run.mismatch(row)
        if why is not None:
            raise TrajectoryFileError(
                f"cannot resume {str(path)!r}: episode {row['episode']} was written with {why}; "
                "resume with the same settings, or write to another --out"
            )


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
    if path.is_dir():
        raise TrajectoryFileError(f"{str(path)!r} is a directory, not a trajectory JSONL file")
    with path.open("rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, 1):
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # a line without its newline was cut by a crash mid-write
            try:
                row = json.loads(raw)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("episode"), int):
                # Each write ends with its newline, so a whole bad line is not a torn write: another file.
                raise TrajectoryFileError(
                    f"{str(path)!r} line {lineno} is not a trajectory row (a JSON object with an 'episode'); "
                    "is it the output of `aligngym rollout`?"
                )
            rows.append(row)
            good_end = offset
    return rows, good_end


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one flushed line per episode as soon as it finishes.

    With ``resume=True`` an existing file is kept: a torn last line is cut off and ``done`` holds the episode
    indices already complete, so a run killed with ``kill -9`` continues without losing or repeating one.
    """

    def __init__(self, path: str | Path, resume: bool = False, run: RunKey | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise TrajectoryFileError(
                f"{str(self.path)!r} is a directory; give a file path such as out.jsonl"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[int] = set()
        self.run = run
        if resume:
            if run is not None:
                check_resumable(self.path, run)
            rows, good_end = _scan(self.path)
            complete = _complete_episodes(rows)
            torn = good_end < (self.path.stat().st_size if self.path.exists() else 0)
            if torn or sum(complete.values()) < len(rows) or not all(map(is_encoded, rows)):
                # Drop a torn last line and the rows of episodes whose seats were not all written; rows of
                # an earlier version are rewritten in this one's format, so the file keeps one schema.
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
                    fh.write(json.dumps(encode_row(row), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, *trajectories: Trajectory) -> None:
        """Write trajectories (all seats of one episode) as lines, handed to the OS before returning."""
        # One write call per episode keeps its lines together; flush so a kill -9 loses at most the episode
        # in flight, which resume detects (torn line, or fewer rows than seats) and redoes.
        if self.run is not None:
            for t in trajectories:
                self.run.stamp(t)
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
