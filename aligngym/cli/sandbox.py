"""``aligngym sandbox build``: build the docker sandbox image locally."""

from __future__ import annotations

import argparse

from .common import UsageError


def add_parser(sub) -> None:
    """Add ``sandbox`` to the subcommands."""
    sx = sub.add_parser("sandbox", help="sandbox backends: build the docker image")
    sx_sub = sx.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")
    bu = sx_sub.add_parser("build", help="build the docker sandbox image here (debootstrap, no registry)")
    bu.add_argument("--python", default="3.11", help="3.11 (Debian bookworm) or 3.13 (trixie); default 3.11")
    bu.add_argument("--packages", default="", help="comma-separated pip packages (wheels), e.g. numpy,sympy")
    bu.add_argument("--tag", default="aligngym-sandbox:latest", help="image tag (default %(default)s)")
    bu.add_argument("--rebuild", action="store_true", help="build even when the image is up to date")
    bu.set_defaults(run=_cmd_sandbox_build)


def _cmd_sandbox_build(args: argparse.Namespace) -> int:
    from aligngym.sandboxes import SandboxError, build_image

    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    try:
        build_image(args.tag, python=args.python, packages=packages, rebuild=args.rebuild)
    except (SandboxError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return 0
