"""Helpers the benchmarks share: interleaved repeats, median and spread, and PASS/FAIL lines for targets.

On a shared machine one run of A then one run of B measures the load as much as A and B, so every benchmark
runs its variants round-robin (``interleave``, each round starting one variant later) and reports the median
with the range of the repeats (``spread``); targets are read off the median of per-round paired figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def interleave(cases: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Each case's results over ``repeats`` rounds; every round runs every case once, rotating who goes first."""
    names = list(cases)
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_ in range(repeats):
        # Rotation: no case always runs first (cold caches) or last (after the others' garbage).
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            results[name].append(cases[name]())
    return results


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median [min-max]`` of ``values`` times ``scale`` (just the value when there is one)."""
    scaled = [v * scale for v in values]
    mid = f"{statistics.median(scaled):.{digits}f}"
    if len(scaled) < 2:
        return mid
    return f"{mid} [{min(scaled):.{digits}f}-{max(scaled):.{digits}f}]"


def paired(ours: Sequence[float], base: Sequence[float], how: Callable[[float, float], float]) -> list[float]:
    """``how(ours[i], base[i])`` for each round ``i``: figures of one round share the machine's load."""
    return [how(a, b) for a, b in zip(ours, base, strict=True)]


def verdict(what: str, values: Sequence[float], limit: float, unit: str = "", digits: int = 2) -> str:
    """A ``PASS``/``FAIL`` line: the median of ``values`` against ``limit`` (lower is better)."""
    value = statistics.median(values)
    state = "PASS" if value <= limit else "FAIL"
    return f"{state} {what}: {spread(values, digits=digits)}{unit} (target <= {limit:g}{unit})"
