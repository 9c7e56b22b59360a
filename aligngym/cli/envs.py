"""``aligngym envs``: list the registered environment ids."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Add ``envs`` to the subcommands."""
    sub.add_parser("envs", help="list registered environment ids").set_defaults(run=_cmd_envs)


def _cmd_envs(_: argparse.Namespace) -> int:
    from aligngym.envs import registered

    entries = registered()
    width = max((len(i) for i in entries), default=0)
    for env_id, entry in entries.items():
        kind = "multi-agent" if entry.multi_agent else "single-agent"
        print(f"{env_id:<{width}}  {kind:<12}  {entry.description}")
    return 0
