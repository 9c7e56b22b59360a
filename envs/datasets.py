"""Task rows for environments: a user list, a user JSONL file, or a file shipped in ``envs/data``."""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any


def load_rows(source: Any, shipped: str, names: tuple[str, ...] = ()) -> list[Any]:
    """Rows from a list, a JSONL path, or the shipped ``envs/data/<shipped>`` (``source`` None or in ``names``)."""
    if source is None or (isinstance(source, str) and source in names):
        # Shipped files are read once per process: many env instances share the parsed rows (read-only).
        return list(_shipped_rows(shipped))
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            choices = f", or one of {', '.join(map(repr, names))}" if names else ""
            raise ValueError(f"task file {str(path)!r} not found; pass a JSONL path, a list of rows{choices}")
        label, text = str(path), _read_text(path)
    elif isinstance(source, Iterable):
        return list(source)
    else:
        raise TypeError(f"tasks must be a list of rows or a JSONL path, got {type(source).__name__}")
    return _parse(text, label)


def _read_text(path: Path) -> str:
    """The text of a task file, gunzipped when it is gzip (``.jsonl.gz``, as HumanEval ships)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"task file {str(path)!r} is a damaged gzip file: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"task file {str(path)!r} is not UTF-8 text (byte {exc.start}); pass a JSONL file or a .jsonl.gz"
        ) from None


@functools.cache
def _shipped_rows(shipped: str) -> tuple[Any, ...]:
    text = resources.files("aligngym.envs").joinpath(f"data/{shipped}").read_text("utf-8")
    return tuple(_parse(text, shipped))


def _parse(text: str, label: str) -> list[Any]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{label}: line {lineno} is not valid JSON: {exc}") from None
    return rows


def checked_tasks(tasks: list[Any], kind: str) -> list[Any]:
    """``tasks`` (objects with an ``id``) after refusing an empty list and duplicate ids, naming ``kind``."""
    if not tasks:
        raise ValueError(f"no {kind} tasks given")
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise ValueError(f"{kind} task {task.id!r}: duplicate id")
        seen.add(task.id)
    return tasks


def pick_task(tasks: list, by_id: dict, rng, options: dict | None):
    """The task ``options["task_id"]`` names, else one drawn with the episode's seeded ``rng``."""
    task_id = (options or {}).get("task_id")
    if task_id is None:
        return tasks[int(rng.integers(0, len(tasks)))]
    if str(task_id) not in by_id:
        raise ValueError(f"unknown task_id {task_id!r}")
    return by_id[str(task_id)]
