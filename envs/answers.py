"""Helpers shared by question-answering environments: voting, fenced code blocks, task choice."""

from __future__ import annotations

from collections import Counter

# Final-answer extraction and matching live in feedback (it owns reward signals); re-exported for envs.
from aligngym.feedback.answers import is_number, normalize, parse_choice, parse_number, parse_short

__all__ = [
    "fenced_blocks",
    "is_number",
    "majority",
    "normalize",
    "parse_choice",
    "parse_number",
    "parse_short",
    "pick_task",
]


def majority(answers: list[str | None]) -> str | None:
    """The most common non-empty answer; ties go to the answer given first (stable, seed-independent)."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a and counts[a] == best)


def fenced_blocks(text: str, languages: set[str] | frozenset[str]) -> list[str]:
    """Bodies of the fenced code blocks whose language is in ``languages`` (``""`` = a bare fence), in order.

    Fences are read line by line, so another language's closing fence never opens a block; a final block
    left unclosed (a reply cut off by the length limit) still counts.
    """
    blocks: list[str] = []
    lang: str | None = None  # the open block's language, None outside a block
    body: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if lang is None and stripped.startswith("```"):
            lang, body = stripped[3:].strip().lower(), []
        elif lang is not None and stripped == "```":
            if lang in languages:
                blocks.append("\n".join(body))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang in languages and body:
        blocks.append("\n".join(body))
    return blocks


def pick_task(tasks: list, by_id: dict, rng, options: dict | None):
    """The task ``options["task_id"]`` names, else one drawn with the episode's seeded ``rng``."""
    task_id = (options or {}).get("task_id")
    if task_id is None:
        return tasks[int(rng.integers(0, len(tasks)))]
    if str(task_id) not in by_id:
        raise ValueError(f"unknown task_id {task_id!r}")
    return by_id[str(task_id)]
