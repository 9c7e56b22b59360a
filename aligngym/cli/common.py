"""What every command shares: the one-line usage error and the checks of env ids and JSON arguments."""

from __future__ import annotations

import json
from typing import Any

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


def json_object(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or a ``UsageError`` naming ``flag``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc.msg} at char {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object like '{{\"max_turns\": 3}}', got {text!r}")
    return value


def check_env(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> None:
    """Build and reset ``env_id`` once; an unknown id or bad argument becomes a ``UsageError``."""
    from aligngym.env_check import EnvArgsError
    from aligngym.env_check import check_env as build_and_reset
    from aligngym.envs.registry import UnknownEnvError

    try:
        build_and_reset(env_id, env_kwargs, seed)
    except (UnknownEnvError, EnvArgsError) as exc:
        raise UsageError(str(exc)) from None
