"""Trajectory reports: one self-contained HTML file per ``aligngym view`` (no network, no CDN).

One file: every episode's chat, per-turn rewards, components and errors, multi-agent seats side by side.
Two files: the same (env, seed, seat, sample) of each run side by side, and what only one run has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .data import file_summary, group_episodes, pair_runs
from .page import embed_json, render_page

#: Episodes per page: the browser builds only one page of chat at a time, so 10,000 episodes stay usable.
PAGE_SIZE = 50


def build_data(
    runs: Sequence[tuple[str, list[dict[str, Any]]]], page_size: int = PAGE_SIZE
) -> dict[str, Any]:
    """The page model of one run (``[(name, rows)]``) or of two runs compared."""
    if len(runs) not in (1, 2):
        raise ValueError(f"a report shows one run or compares two, not {len(runs)}")
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    items = group_episodes(runs[0][1]) if len(runs) == 1 else pair_runs(runs[0][1], runs[1][1])
    return {
        "mode": "single" if len(runs) == 1 else "compare",
        "files": [name for name, _ in runs],
        "summary": [file_summary(name, rows) for name, rows in runs],
        "page_size": page_size,
        "items": items,
    }


def build_report(runs: Sequence[tuple[str, list[dict[str, Any]]]], page_size: int = PAGE_SIZE) -> str:
    """The HTML report of one run, or of two runs side by side."""
    return render_page(build_data(runs, page_size))


__all__ = ["PAGE_SIZE", "build_data", "build_report", "embed_json", "render_page"]
