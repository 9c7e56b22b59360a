"""Check a run's env arguments before its first episode: types, sandbox settings, one env built and reset."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from typing import Any


class EnvArgsError(ValueError):
    """Env arguments that cannot run; the message names the argument and what it must be."""


def _check_sandbox(kwargs: dict[str, Any]) -> None:
    """Refuse an unknown backend name and ``sandbox_kwargs`` that are not typed ``SandboxConfig`` fields."""
    from aligngym.sandboxes.base import SandboxConfig
    from aligngym.sandboxes.factory import BACKENDS

    backend = kwargs.get("sandbox")
    if "sandbox" in kwargs and backend is not None and not isinstance(backend, str):
        raise EnvArgsError(f"sandbox must be a backend name ({', '.join(sorted(BACKENDS))}), got {backend!r}")
    if isinstance(backend, str) and backend not in BACKENDS:
        raise EnvArgsError(f"sandbox {backend!r} is not a backend; use one of {', '.join(sorted(BACKENDS))}")
    extra = kwargs.get("sandbox_kwargs")
    if extra is None:
        return
    if not isinstance(extra, dict):
        raise EnvArgsError(f"sandbox_kwargs must be an object, got {extra!r}")
    fields = {f.name: f for f in dataclasses.fields(SandboxConfig)}
    try:
        hints = typing.get_type_hints(SandboxConfig)
    except Exception:  # an annotation that does not resolve here: the names are still checked
        hints = {}
    for key, value in extra.items():
        if key not in fields:
            raise EnvArgsError(f"sandbox_kwargs: unknown key {key!r}; valid keys: {', '.join(fields)}")
        if key in hints:
            _check_field(key, value, hints[key])


def _check_field(key: str, value: Any, annotation: Any) -> None:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    if value is None:
        ok = type(None) in options
    elif isinstance(value, bool):
        ok = bool in options
    elif isinstance(value, numbers.Real):
        ok = float in options or (int in options and isinstance(value, numbers.Integral))
        # Every numeric SandboxConfig field is a limit: zero, negative or infinite ones mean nothing.
        if ok and (not math.isfinite(value) or value <= 0):
            raise EnvArgsError(f"sandbox_kwargs: {key} must be a positive number, got {value!r}")
    else:
        kinds = [typing.get_origin(t) or t for t in options if t not in (int, float, bool, type(None))]
        ok = any(isinstance(k, type) and isinstance(value, k) for k in kinds)
    if not ok:
        wanted = " or ".join("None" if t is type(None) else getattr(t, "__name__", str(t)) for t in options)
        raise EnvArgsError(f"sandbox_kwargs: {key} must be {wanted}, got {value!r}")


def check_env(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> None:
    """Raise ``EnvArgsError`` (one line) unless ``env_id`` builds with ``env_kwargs`` and resets.

    ``UnknownEnvError`` passes through unchanged; errors raised by the env's own code while building or
    resetting are reported as the arguments' fault, since with default arguments every env resets.
    """
    from aligngym.envs.registry import UnknownEnvError, make

    shown = json.dumps(env_kwargs, default=repr)
    _check_sandbox(env_kwargs)
    try:
        env = make(env_id, **env_kwargs)
    except UnknownEnvError:
        raise
    except (TypeError, ValueError) as exc:
        raise EnvArgsError(f"cannot create {env_id} with env kwargs {shown}: {exc}") from None
    except ImportError as exc:  # an optional extra not installed: its message says what to pip install
        raise EnvArgsError(f"cannot create {env_id}: {exc}") from None
    try:
        env.reset(seed=seed)
    except Exception as exc:
        raise EnvArgsError(
            f"{env_id} with env kwargs {shown} fails on reset: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        env.close()
