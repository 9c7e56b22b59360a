"""``aligngym envs``: list the registered environment ids."""

from __future__ import annotations

import argparse
import re

# A package's description is its author's text: control characters (ANSI escapes, carriage returns) could
# redraw the terminal and pass one env off as another.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def add_parser(sub) -> None:
    """Add ``envs`` to the subcommands."""
    sub.add_parser("envs", help="list registered environment ids").set_defaults(run=_cmd_envs)


def _cmd_envs(_: argparse.Namespace) -> int:
    from aligngym.envs import registered

    entries = registered()
    width = max((len(i) for i in entries), default=0)
    for env_id, entry in entries.items():
        kind = "multi-agent" if entry.multi_agent else "single-agent"
        line = f"{env_id:<{width}}  {kind:<12}  {entry.description}"
        if entry.package:
            line += f"  [package {entry.package} {entry.package_version}]"
        print(_CONTROL.sub("?", line))
    return 0
