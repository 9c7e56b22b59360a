"""Trajectories and their JSONL store: one JSON object per finished episode, crash-safe and resumable."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .rows import RowIdentity, decode_row, encode_row, is_encoded, row_identity

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
        # Fields taken as they are, not through asdict's deep copy: _jsonable rebuilds every container anyway.
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(encode_row(_jsonable(row)), ensure_ascii=False, allow_nan=False)

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
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
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
    path = Path(path)
    return [_decoded(path, lineno, _parsed(path, lineno, raw)) for lineno, raw, _ in _lines(path)]


def check_resumable(path: str | Path, run: RunKey) -> None:
    """Raise ``TrajectoryFileError`` unless every row of ``path`` (if it exists) was written by ``run``."""
    for _ in _keys(Path(path), run):
        pass


def _lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Each complete line: its number, its bytes and the offset just past it (a torn last line is left out)."""
    if not path.exists():
        return
    if path.is_dir():
        raise TrajectoryFileError(f"{str(path)!r} is a directory, not a trajectory JSONL file")
    with path.open("rb") as fh:
        end = 0
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return  # a line without its newline was cut by a crash mid-write
            end += len(raw)
            yield lineno, raw, end


def _parsed(path: Path, lineno: int, raw: bytes) -> dict[str, Any]:
    """A line's JSON object, which must have an int ``episode``."""
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
    return row


def _decoded(path: Path, lineno: int, row: dict[str, Any]) -> dict[str, Any]:
    """``decode_row(row)``, or a ``TrajectoryFileError`` naming the line."""
    try:
        return decode_row(row)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a field in no form rows are written in
        raise TrajectoryFileError(
            f"{str(path)!r} line {lineno}: a field cannot be read ({type(exc).__name__}: {exc}); "
            "is it the output of `aligngym rollout`?"
        ) from None


def _identity(raw: bytes) -> RowIdentity | None:
    """A line's identity when it is in the writer's own layout (read without parsing it), else ``None``."""
    try:
        return row_identity(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None  # json.loads decides: it takes some bytes that strict UTF-8 refuses


class _Key(NamedTuple):
    """What resume keeps of a row: its episode, how many seats (rows) it has, whether it is in this form."""

    episode: int
    num_agents: int
    encoded: bool


def _keys(path: Path, run: RunKey | None) -> Iterator[tuple[_Key, int]]:
    """Each complete row's key and the offset past it; ``TrajectoryFileError`` for a row of another run.

    A line in the writer's own layout is read by ``row_identity`` (no JSON parsing of its messages); any
    other line (an earlier version's, a foreign or hand-edited one) is parsed and decoded in full.
    """
    checked: tuple[Any, ...] | None = None  # the run fields last found to be this run's: rows repeat them
    for lineno, raw, end in _lines(path):
        identity = _identity(raw)
        if identity is None:
            row = _parsed(path, lineno, raw)
            decoded = _decoded(path, lineno, row)
            if run is not None:
                _refuse_other_run(path, run, decoded)
            yield _Key(int(row["episode"]), _seats(path, lineno, row), is_encoded(row)), end
            continue
        if run is not None:
            fields = _run_fields(identity, run)
            if fields != checked:
                _refuse_other_run(path, run, _decoded(path, lineno, identity._asdict()))
                checked = fields
        yield _Key(identity.episode, identity.num_agents, True), end


def _run_fields(identity: RowIdentity, run: RunKey) -> tuple[Any, ...]:
    """What ``RunKey.mismatch`` reads of a row, the episode folded into the seed: equal tuples, same verdict."""
    seed = identity.seed
    offset = None if seed is None else seed - identity.episode // run.samples_per_prompt
    return identity.env_id, identity.samples_per_prompt, offset, identity.env_kwargs


def _refuse_other_run(path: Path, run: RunKey, row: dict[str, Any]) -> None:
    why = run.mismatch(row)
    if why is not None:
        raise TrajectoryFileError(
            f"cannot resume {str(path)!r}: episode {row['episode']} was written with {why}; "
            "resume with the same settings, or write to another --out"
        )


def _seats(path: Path, lineno: int, row: dict[str, Any]) -> int:
    try:
        return int(row.get("num_agents", 1))
    except (ValueError, TypeError) as exc:
        raise TrajectoryFileError(f"{str(path)!r} line {lineno}: num_agents cannot be read ({exc})") from None


@dataclass
class _Finished:
    """What resuming a file found: its complete episodes, and how the file must change to hold only them."""

    done: set[int] = field(default_factory=set)
    #: Where the rows to drop (a torn last line, the rows of an episode cut mid-write) begin when they are all
    #: at the end, so that cutting the file there drops them; ``None`` when some are not.
    keep: int | None = 0
    #: Whether every row is in this version's form (if not, the file is rewritten in it).
    encoded: bool = True


def _finished(path: Path, run: RunKey | None) -> _Finished:
    """Read ``path`` once, keeping per episode only its row count: an episode is complete with a row per seat."""
    found = _Finished()
    # Most episodes are one row for one seat: they go straight into ``done``. Others are counted (the seats
    # an episode has are what its last row says).
    rows: dict[int, int] = {}
    seats: dict[int, int] = {}
    last, last_start, last_rows = (
        None,
        0,
        0,
    )  # the episode of the final run of consecutive rows, where it starts
    end = 0
    for key, line_end in _keys(path, run):
        found.encoded = found.encoded and key.encoded
        if key.episode == last:
            last_rows += 1
        else:
            last, last_start, last_rows = key.episode, end, 1
        end = line_end
        episode = key.episode
        if key.num_agents == 1 and episode not in rows and episode not in found.done:
            found.done.add(episode)
            continue
        if episode in found.done:  # a second row of an episode counted as one row for one seat
            found.done.discard(episode)
            rows[episode] = seats[episode] = 1
        rows[episode] = rows.get(episode, 0) + 1
        seats[episode] = key.num_agents
    cut = [e for e, n in rows.items() if n < seats[e]]
    found.done.update(e for e, n in rows.items() if n >= seats[e])
    # A kill -9 mid-write leaves the episode in flight (a writer's last write) short: cut off where it starts.
    found.keep = end if not cut else last_start if cut == [last] and rows[last] == last_rows else None
    return found


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one flushed line per episode as soon as it finishes.

    With ``resume=True`` an existing file is kept: a torn last line is cut off and ``done`` holds the episode
    indices already complete, so a run killed with ``kill -9`` continues without losing or repeating one.
    Resuming reads the file as a stream and keeps only each episode's index and row count.
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
            found = _finished(self.path, run)
            size = self.path.stat().st_size if self.path.exists() else 0
            if not found.encoded or found.keep is None:
                # Rows of an earlier version are rewritten in this one's format, so the file keeps one schema;
                # the rows of episodes whose seats were not all written go.
                self._rewrite(found.done)
            elif found.keep < size:
                self._cut(found.keep)  # a torn last line, or the rows of the episode in flight at a crash
            self.done = found.done
            self._fh = self.path.open("a", encoding="utf-8")
        else:
            self._fh = self.path.open("w", encoding="utf-8")

    def _rewrite(self, done: set[int]) -> None:
        """Replace the file by its rows of ``done`` episodes, each in this version's form."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fh:
            for lineno, raw, _ in _lines(self.path):
                identity = _identity(raw)
                if identity is not None:
                    if identity.episode in done:
                        fh.write(raw)  # already in this version's form
                    continue
                row = _parsed(self.path, lineno, raw)
                if int(row["episode"]) in done:
                    fh.write((json.dumps(encode_row(row), ensure_ascii=False) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _cut(self, size: int) -> None:
        """Drop everything past ``size`` bytes (rows to drop that are all at the end)."""
        with self.path.open("r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())

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
