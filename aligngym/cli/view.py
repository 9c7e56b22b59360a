"""``aligngym view``: one self-contained HTML report of a trajectory file, or of two compared side by side."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import UsageError


def add_parser(sub) -> None:
    """Add ``view`` to the subcommands."""
    vw = sub.add_parser(
        "view", help="write one self-contained HTML report of trajectories (two files: compared side by side)"
    )
    vw.add_argument(
        "trajectories",
        nargs="+",
        metavar="TRAJ.jsonl",
        help="output of `aligngym rollout`; give a second file to compare the same seeds side by side",
    )
    vw.add_argument("--out", required=True, help="HTML file to write, e.g. report.html")
    vw.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    vw.add_argument("--page-size", type=int, default=None, help="episodes per page (default 50)")
    vw.set_defaults(run=_cmd_view)


def _check_args(args: argparse.Namespace) -> None:
    """Refuse what would fail or lose data, before reading anything: missing inputs, an --out in the way."""
    if len(args.trajectories) > 2:
        raise UsageError(f"give one trajectory file, or two to compare; got {len(args.trajectories)}")
    if args.page_size is not None and args.page_size < 1:
        raise UsageError("--page-size must be >= 1")
    for name in args.trajectories:
        path = Path(name)
        if not path.exists():
            raise UsageError(f"trajectory file {name!r} not found")
        if path.is_dir():
            raise UsageError(f"{name!r} is a directory, not a trajectory JSONL file")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {args.out!r} is a directory; give a file path such as {out / 'report.html'}")
    if any(out.exists() and out.resolve() == Path(name).resolve() for name in args.trajectories):
        raise UsageError(f"--out {args.out!r} is an input file; write the report elsewhere")
    if out.exists() and out.stat().st_size and not args.overwrite:
        raise UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")


def _read(name: str) -> list[dict[str, Any]]:
    from aligngym.trajectory import TrajectoryFileError, read_trajectories

    try:
        rows = read_trajectories(name)
    except TrajectoryFileError as exc:
        raise UsageError(str(exc)) from None
    if not rows and Path(name).stat().st_size:
        raise UsageError(f"{name!r} holds no trajectory rows; is it the output of `aligngym rollout`?")
    return rows


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all: a failed write never leaves a half report where the old one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _summary(data: dict[str, Any], out: str, size: int) -> str:
    """The closing line: where the report went and what it holds."""
    items = data["items"]
    if data["mode"] == "single":
        return f"wrote {len(items)} episodes from {data['files'][0]} to {out} ({_size(size)})"
    counts = {
        status: sum(1 for i in items if i["match"] == status) for status in ("both", "a", "b", "partial")
    }
    a, b = data["files"]
    partial = f", {counts['partial']} partly matched" if counts["partial"] else ""
    return (
        f"wrote {len(items)} pairs to {out} ({_size(size)}): {counts['both']} matched, "
        f"{counts['a']} only in {a}, {counts['b']} only in {b}{partial}"
    )


def _cmd_view(args: argparse.Namespace) -> int:
    from aligngym.viewer import PAGE_SIZE, build_data, render_page

    _check_args(args)
    runs = [(name, _read(name)) for name in args.trajectories]
    data = build_data(runs, page_size=args.page_size or PAGE_SIZE)
    html = render_page(data)
    _write(Path(args.out), html)
    print(_summary(data, args.out, len(html.encode("utf-8"))))
    return 0
