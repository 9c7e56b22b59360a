"""``aligngym serve``: expose a registered single-agent environment over OpenEnv's HTTP/WebSocket protocol."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from .common import UsageError, check_env, json_object


def add_parser(sub) -> None:
    """Add ``serve`` to the subcommands."""
    sv = sub.add_parser("serve", help="serve an environment over OpenEnv's protocol (openenv-core clients)")
    sv.add_argument(
        "env_id", metavar="ENV_ID", help="registered single-agent id, e.g. aligngym/Arithmetic-v0"
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine)"
    )
    sv.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
    sv.add_argument(
        "--env-kwargs",
        default="{}",
        help="JSON object of env arguments, fixed for every client, e.g. '{\"max_turns\": 3}'",
    )
    sv.add_argument(
        "--max-sessions", type=int, default=16, help="WebSocket sessions at once, one env each (default 16)"
    )
    sv.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="close a session idle for S seconds (default 600)",
    )
    sv.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from aligngym.envs.registry import UnknownEnvError, spec

    env_kwargs = json_object(args.env_kwargs, "--env-kwargs")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.max_sessions < 1 or not args.idle_timeout > 0:
        raise UsageError("--max-sessions must be >= 1 and --idle-timeout > 0")
    try:
        multi_agent = spec(args.env_id).multi_agent
    except UnknownEnvError as exc:
        raise UsageError(str(exc)) from None
    if multi_agent:
        raise UsageError(f"{args.env_id} is multi-agent; aligngym serve serves single-agent envs only")
    check_env(args.env_id, env_kwargs)
    sock = _listen(args.host, args.port)  # before importing openenv-core, which takes seconds (gradio)
    try:
        from aligngym.openenv_server import build_app, serve
    except ImportError:
        sock.close()
        raise UsageError("aligngym serve needs openenv-core: pip install 'aligngym[openenv]'") from None
    app = build_app(args.env_id, env_kwargs, args.max_sessions, args.idle_timeout)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(
            f"aligngym: warning: listening on {host}: anyone who reaches this port can query {args.env_id}'s "
            "rewards",
            file=sys.stderr,
        )
    print(f"serving {args.env_id} over OpenEnv at http://{shown}:{port} (Ctrl-C stops)", flush=True)
    serve(app, sock)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, or a ``UsageError`` saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
