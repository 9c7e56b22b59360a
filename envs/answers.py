"""Answer extraction and matching shared by question-answering environments and verifiers."""

from __future__ import annotations

import re
import string
from collections import Counter

_LETTER_PAREN = re.compile(r"\(([A-Da-d])\)")
_LETTER_SAID = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Da-d])\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_LINE = re.compile(r"answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces: the usual exact-match normalisation."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_choice(text: str) -> str | None:
    """The multiple-choice letter an answer commits to: the last ``(X)``, else ``answer is X``, else a lone letter."""
    found = _LETTER_PAREN.findall(text)
    if found:
        return found[-1].upper()
    found = _LETTER_SAID.findall(text)
    if found:
        return found[-1].upper()
    stripped = text.strip().strip(".").strip()
    return stripped.upper() if len(stripped) == 1 and stripped.upper() in "ABCD" else None


def parse_number(text: str) -> str | None:
    """The last number in the text, without thousands separators (``1,000`` -> ``1000``, ``2.50`` -> ``2.5``)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def parse_short(text: str) -> str:
    """A short free-text answer: what follows the last ``Answer:``/``answer is``, else the last line."""
    found = _ANSWER_LINE.findall(text)
    candidate = found[-1] if found else (text.strip().splitlines() or [""])[-1]
    return normalize(candidate)


def is_number(text: str) -> bool:
    """Whether a gold answer is numeric (then answers are compared as numbers)."""
    return _NUMBER.fullmatch(text.strip().replace(",", "")) is not None


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
