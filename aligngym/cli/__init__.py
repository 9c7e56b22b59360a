"""The ``aligngym`` command: list environments, run rollouts, evaluate, view, train.

Every user error (unknown env id, bad JSON, bad YAML, unreachable server) is one line on stderr and exit
code 2; a crash in our own code keeps its traceback. Each subcommand is one module of this package with an
``add_parser(sub)`` that registers it and sets ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import EXIT_USAGE, UsageError

#: Subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ("envs", "init", "rollout", "eval", "pairs", "sandbox", "train", "view", "serve")


def _parser() -> argparse.ArgumentParser:
    from importlib import import_module

    parser = argparse.ArgumentParser(prog="aligngym", description="Every alignment signal is an environment.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aligngym`` command."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"aligngym: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aligngym: interrupted", file=sys.stderr)
        return 130


__all__ = ["EXIT_USAGE", "UsageError", "main"]
