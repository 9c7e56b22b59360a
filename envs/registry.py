"""One registry for every aligngym environment, on top of Gymnasium's.

Single-agent environments are registered with ``gymnasium.register`` so ``gym.make`` works; the table here
adds what Gymnasium does not keep: a one-line description and the kind (single- or multi-agent). The
description has one source, the entry point: its ``description`` attribute, else its docstring's first line.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import inspect
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

NAMESPACE = "aligngym"


@dataclass(frozen=True)
class EnvEntry:
    """What the registry knows about one environment id."""

    id: str
    entry_point: Callable[..., Any] | str
    multi_agent: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def description(self) -> str:
        """The entry point's ``description`` (else its docstring's first line), for ``aligngym envs``."""
        if isinstance(self.entry_point, str):
            module, _, name = self.entry_point.partition(":")
            if module not in sys.modules:  # read it from the source: listing envs need not import them all
                written = _class_descriptions(module).get(name, "").strip()
                if written:
                    return written
        own = getattr(self._factory, "description", "")
        if isinstance(own, str) and own.strip():
            return own.strip()
        doc = (getattr(self._factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    @functools.cached_property
    def _factory(self) -> Callable[..., Any]:
        # Resolved on first use, so registering by "module:Class" imports nothing.
        return _resolve(self.entry_point)

    @functools.cached_property
    def _hints(self) -> dict[str, Any] | None:
        # Resolved once per registration: make() checks kwargs against them on every call.
        factory = self._factory
        try:
            return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
        except Exception:  # an annotation that does not resolve here: leave the checking to the env
            return None


_ENTRIES: dict[str, EnvEntry] = {}


@functools.cache
def _class_descriptions(module: str) -> dict[str, str]:
    """Class name -> the string literal its body assigns to ``description``, read from ``module``'s source.

    Only what the class itself writes as a literal; anything else (inherited, computed) is left to the import.
    """
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))  # type: ignore[union-attr, arg-type]
    except Exception:  # not a plain source module: the caller imports it instead
        return {}
    found = {}
    for node in tree.body:
        for stmt in node.body if isinstance(node, ast.ClassDef) else ():
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            value = getattr(stmt, "value", None)
            is_description = isinstance(target, ast.Name) and target.id == "description"
            if is_description and isinstance(value, ast.Constant) and isinstance(value.value, str):
                found[node.name] = value.value
    return found


class UnknownEnvError(KeyError):
    """An environment id that nobody registered; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(
    id: str,
    entry_point: Callable[..., Any] | str,
    *,
    multi_agent: bool = False,
    **kwargs: Any,
) -> None:
    """Register an environment class (or ``"module:Class"``) under ``id``; ``kwargs`` become its defaults.

    ``aligngym envs`` shows the class's ``description`` (else its docstring's first line): write it there.
    """
    if "/" not in id:
        raise ValueError(f"env id {id!r} needs a namespace, e.g. 'myproject/{id}'")
    if "description" in kwargs:  # it would otherwise become a constructor default
        raise TypeError(
            "register() takes no description: set the class's `description` attribute (or its docstring)"
        )
    if multi_agent:
        # Gymnasium cannot build PettingZoo envs, but gym.make should say where to go, not "NameNotFound".
        gym.register(id=id, entry_point=functools.partial(_not_a_gym_env, id), disable_env_checker=True)
    else:
        gym.register(id=id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)
    _ENTRIES[id] = EnvEntry(id, entry_point, multi_agent, dict(kwargs))


def _not_a_gym_env(id: str, **_: Any) -> Any:
    raise gym.error.Error(
        f"{id} is a multi-agent (PettingZoo) environment, which gym.make cannot build: "
        f"use aligngym.make({id!r}, ...)"
    )


def registered() -> dict[str, EnvEntry]:
    """All registered environments, sorted by id."""
    return dict(sorted(_ENTRIES.items()))


def spec(id: str) -> EnvEntry:
    """The registry entry for ``id``, or ``UnknownEnvError`` naming close matches."""
    try:
        return _ENTRIES[id]
    except KeyError:
        close = difflib.get_close_matches(id, list(_ENTRIES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownEnvError(
            f"unknown environment id {id!r}{hint} (run `aligngym envs` for the list)"
        ) from None


def _resolve(entry_point: Callable[..., Any] | str) -> Callable[..., Any]:
    if isinstance(entry_point, str):
        module, _, attr = entry_point.partition(":")
        return getattr(__import__(module, fromlist=[attr]), attr)
    return entry_point


def _scalar_types(annotation: Any) -> tuple[type, ...] | None:
    """The scalar types (bool, int, float, str) an annotation allows, None allowed as ``type(None)``.

    ``None`` (not a tuple) when the annotation admits anything else, so the value is not checked here.
    """
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if typing.get_origin(annotation) is typing.Union:
        options = typing.get_args(annotation)
    if all(o in (bool, int, float, str, type(None)) for o in options):
        return tuple(options)
    return None


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    # JSON gives 2.5 or true where an int is meant; both are mistakes, not values to coerce.
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, numbers.Integral):
        return int in allowed or float in allowed
    if isinstance(value, numbers.Real):
        return float in allowed
    return isinstance(value, str) and str in allowed


def _non_finite(value: Any, path: str) -> str | None:
    """The path of a NaN or infinite number inside ``value`` (None when there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}[{key!r}]")
        if found:
            return found
    return None


def check_kwargs(id: str, kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError``/``ValueError`` for an argument of ``id``'s constructor that has the wrong type.

    Checks the scalar parameters (``int``, ``float``, ``bool``, ``str`` and their optionals) against the
    constructor's annotations, and refuses NaN and infinities anywhere; the env checks ranges itself.
    """
    for name, value in kwargs.items():
        bad = _non_finite(value, name)
        if bad:
            raise ValueError(f"{bad} must be a finite number, got {value!r}")
    hints = spec(id)._hints
    if hints is None:
        return
    for name, value in kwargs.items():
        allowed = _scalar_types(hints.get(name))
        if allowed and not _fits(value, allowed):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise TypeError(f"{name} must be {wanted}, got {value!r}")


def make(id: str, **kwargs: Any) -> Any:
    """Build any registered environment: a gymnasium ``Env`` or, for multi-agent ids, a PettingZoo env.

    Arguments of the wrong scalar type (``2.5`` or ``true`` for an integer, NaN) raise before construction.
    """
    entry = spec(id)
    check_kwargs(id, kwargs)
    if entry.multi_agent:
        return entry._factory(**{**entry.kwargs, **kwargs})
    return gym.make(id, **kwargs)
