"""``aligngym init NAME``: scaffold an installable environment package (see ``aligngym.scaffold``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError


def add_parser(sub) -> None:
    """Add ``init`` to the subcommands."""
    p = sub.add_parser(
        "init",
        help="scaffold an installable environment package",
        description="Write a new environment package (pyproject with the aligngym.envs entry point, an env, "
        "a README and a conformance test) into a new directory; `pip install -e` it and `aligngym envs` "
        "lists its env.",
    )
    p.add_argument("name", help="package (and env namespace) name: lowercase letters, digits, '_'")
    p.add_argument("--dir", type=Path, default=None, help="directory to create (default: ./NAME)")
    p.set_defaults(run=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    from aligngym.scaffold import ENV_NAME, scaffold

    target = args.dir if args.dir is not None else Path(args.name)
    try:
        files = scaffold(args.name, target)
    except (ValueError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    for path in files:
        print(f"created {path}")
    print(f"env id: {args.name}/{ENV_NAME}")
    print(f"next: pip install -e {target} && aligngym envs")
    return 0
