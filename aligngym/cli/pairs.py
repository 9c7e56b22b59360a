"""``aligngym pairs``: DPO preference pairs from trajectories."""

from __future__ import annotations

import argparse
import sys

from .common import UsageError


def add_parser(sub) -> None:
    """Add ``pairs`` to the subcommands."""
    pa = sub.add_parser("pairs", help="build DPO preference pairs from trajectories")
    pa.add_argument("trajectories", metavar="TRAJ.jsonl", help="output of `aligngym rollout`")
    pa.add_argument("--out", required=True, help="pairs JSONL (prompt, chosen, rejected, rewards)")
    pa.add_argument("--min-margin", type=float, default=0.1, help="least reward gap (default 0.1)")
    pa.add_argument("--max-pairs-per-prompt", type=int, default=4, help="most pairs per prompt (default 4)")
    pa.set_defaults(run=_cmd_pairs)


def _cmd_pairs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aligngym.trainers.pairs import PairConfig, build_pairs, why_no_pairs, write_jsonl
    from aligngym.trajectory import TrajectoryFileError, read_trajectories

    if not Path(args.trajectories).exists():
        raise UsageError(f"trajectory file {args.trajectories!r} not found")
    try:
        rows = read_trajectories(args.trajectories)
    except TrajectoryFileError as exc:
        raise UsageError(str(exc)) from None
    if not rows and Path(args.trajectories).stat().st_size:
        raise UsageError(
            f"{args.trajectories!r} holds no trajectory rows; is it the output of `aligngym rollout`?"
        )
    config = PairConfig(min_margin=args.min_margin, max_pairs_per_prompt=args.max_pairs_per_prompt)
    pairs = build_pairs(rows, config)
    n = write_jsonl(pairs, args.out)
    print(f"wrote {n} pairs from {len(rows)} trajectories to {args.out}")
    if not n:
        print(f"aligngym: no pairs: {why_no_pairs(rows, config)}", file=sys.stderr)
    return 0
