"""One registry for every aligngym environment, on top of Gymnasium's.

Single-agent environments are registered with ``gymnasium.register`` so ``gym.make`` works; the table here
adds what Gymnasium does not keep: a one-line description, the kind (single- or multi-agent) and, for an env
an installed package declares (``envs/packages.py``), that package. The description has one source, the
entry point: its ``description`` attribute, else its docstring's first line.

Importing this module registers the envs that installed packages declare as entry points (Gymnasium 1.x
loads no plugins itself); none of their modules is imported before its env is made, and none can take a
built-in id (docs/env-packages.md). ``ALIGNGYM_ENTRY_POINTS=0`` turns that off, for runs of built-ins only.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import logging
import math
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from .packages import GROUPS, EntryPointEnv, scan

NAMESPACE = "aligngym"
_log = logging.getLogger("aligngym.envs")


@dataclass(frozen=True)
class EnvEntry:
    """What the registry knows about one environment id."""

    id: str
    entry_point: Callable[..., Any] | str
    multi_agent: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The distribution that declared this id as an entry point, and its version ("" when code registered it).
    package: str = ""
    package_version: str = ""

    @functools.cached_property
    def description(self) -> str:
        """The entry point's ``description`` (else its docstring's first line), for ``aligngym envs``."""
        if isinstance(self.entry_point, str):
            module, _, name = self.entry_point.partition(":")
            if module not in sys.modules:  # read it from the source: listing envs need not import them all
                written = _class_descriptions(module).get(name, "").strip()
                if written:
                    return written
                if self.package:  # a package's module is imported only to make its env, never to list it
                    return _class_docstring(module, name)
        own = getattr(self._factory, "description", "")
        if isinstance(own, str) and own.strip():
            return own.strip()
        doc = (getattr(self._factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    @functools.cached_property
    def _factory(self) -> Callable[..., Any]:
        # Resolved on first use, so registering by "module:Class" imports nothing.
        if not self.package:
            return _resolve(self.entry_point)
        try:
            factory = _resolve(self.entry_point)
        except Exception as exc:  # the package's bug, not ours: one line that names it
            raise EnvPackageError(
                f"{self.id}: cannot load {self.entry_point!r} from package {self.package} "
                f"{self.package_version}: {type(exc).__name__}: {exc}"
            ) from exc
        _check_kind(self, factory)
        return factory

    @functools.cached_property
    def _hints(self) -> dict[str, Any] | None:
        # Resolved once per registration: make() checks kwargs against them on every call.
        factory = self._factory
        try:
            return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
        except Exception:  # an annotation that does not resolve here: leave the checking to the env
            return None


_ENTRIES: dict[str, EnvEntry] = {}


def _source_file(module: str) -> str | None:
    """Where ``module``'s source is, found as ``import`` would find it but without running any package above
    it that is not loaded yet (``importlib.util.find_spec`` imports the parents: a package's code)."""
    parts = module.split(".")
    found = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        if name in sys.modules:
            found = getattr(sys.modules[name], "__spec__", None)
            continue
        locations = getattr(found, "submodule_search_locations", None)
        if i and not locations:
            return None
        found = _find_spec(name, list(locations) if locations else None)
        if found is None:
            return None
    return getattr(found, "origin", None)


def _find_spec(name: str, locations: list[str] | None) -> Any:
    # The import system's own search: each finder on sys.meta_path (editable installs add theirs), in order.
    for finder in sys.meta_path:
        try:
            found = finder.find_spec(name, locations)  # type: ignore[attr-defined]
        except Exception:  # a finder that cannot answer for this name
            continue
        if found is not None:
            return found
    return None


@functools.cache
def _class_nodes(module: str) -> dict[str, ast.ClassDef]:
    """The top-level classes of ``module``'s source, by name (none when it is not a plain source module)."""
    try:
        tree = ast.parse(Path(_source_file(module)).read_text(encoding="utf-8"))  # type: ignore[arg-type]
    except Exception:  # not a plain source module: the caller imports it instead
        return {}
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _class_docstring(module: str, name: str) -> str:
    """The first line of class ``name``'s docstring in ``module``'s source ("" when it has none)."""
    node = _class_nodes(module).get(name)
    doc = (ast.get_docstring(node) or "").strip() if node else ""
    return doc.splitlines()[0] if doc else ""


@functools.cache
def _class_descriptions(module: str) -> dict[str, str]:
    """Class name -> the string literal its body assigns to ``description``, read from ``module``'s source.

    Only what the class itself writes as a literal; anything else (inherited, computed) is left to the import.
    """
    found = {}
    for node in _class_nodes(module).values():
        for stmt in node.body:
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


class EnvPackageError(UnknownEnvError):
    """An id an installed package declares but cannot provide (refused, or its module does not load)."""


#: Ids whose entry points were refused -> why, for the error ``make`` gives.
_REFUSED: dict[str, str] = {}


def register(
    id: str,
    entry_point: Callable[..., Any] | str,
    *,
    multi_agent: bool = False,
    **kwargs: Any,
) -> None:
    """Register an environment class (or ``"module:Class"``) under ``id``; ``kwargs`` become its defaults.

    ``aligngym envs`` shows the class's ``description`` (else its docstring's first line): write it there.
    A built-in ``aligngym/`` id, once registered, cannot be registered again (``ValueError``).
    """
    if "/" not in id:
        raise ValueError(f"env id {id!r} needs a namespace, e.g. 'myproject/{id}'")
    if "description" in kwargs:  # it would otherwise become a constructor default
        raise TypeError(
            "register() takes no description: set the class's `description` attribute (or its docstring)"
        )
    if id in _ENTRIES and _is_builtin(id):
        # Code a package runs when its env is made must not swap a grader of ours for its own.
        raise ValueError(
            f"{id} is a built-in environment and cannot be replaced; register under your namespace"
        )
    _add(EnvEntry(id, entry_point, multi_agent, dict(kwargs)))


def _add(entry: EnvEntry) -> None:
    """Put ``entry`` in this table and in Gymnasium's (where ``gym.make`` reaches it)."""
    if entry.multi_agent:
        # Gymnasium cannot build PettingZoo envs, but gym.make should say where to go, not "NameNotFound".
        creator: Any = functools.partial(_not_a_gym_env, entry.id)
    else:
        creator = _PackageLoader(entry) if entry.package else entry.entry_point
    gym.register(id=entry.id, entry_point=creator, kwargs=entry.kwargs, disable_env_checker=True)
    _ENTRIES[entry.id] = entry


def _is_builtin(id: str) -> bool:
    return id.split("/")[0] == NAMESPACE


class _PackageLoader:
    """``gym.make``'s entry point for a package's env: imports it at the first make, naming the package if
    that fails (a plain ``"module:Class"`` would give a bare ``ModuleNotFoundError``)."""

    def __init__(self, entry: EnvEntry):
        self.entry = entry

    @property
    def metadata(self) -> Any:
        # gym.make reads the class's render modes before building; AttributeError (none) tells it to skip.
        return self.entry._factory.metadata

    def __call__(self, **kwargs: Any) -> Any:
        return self.entry._factory(**kwargs)

    def __repr__(self) -> str:
        return f"{self.entry.entry_point} (package {self.entry.package} {self.entry.package_version})"


def _check_kind(entry: EnvEntry, factory: Any) -> None:
    """Raise ``EnvPackageError`` when a package declared a class in the group of the other kind."""
    if not inspect.isclass(factory):
        return  # a factory function: what it builds is checked when it is built
    parallel = any(
        k.__name__ == "ParallelEnv" and k.__module__.startswith("pettingzoo") for k in factory.__mro__
    )
    if parallel != entry.multi_agent:
        wanted = next(g for g, multi in GROUPS.items() if multi == parallel)
        kind = "a PettingZoo (multi-agent)" if parallel else "a Gymnasium (single-agent)"
        raise EnvPackageError(
            f"{entry.id}: package {entry.package} {entry.package_version} declares {entry.entry_point!r}, "
            f"{kind} env, in the wrong entry-point group: declare it under {wanted!r}"
        )


def load_entry_points(paths: list[str] | None = None) -> list[str]:
    """Register the envs that distributions on ``paths`` (default ``sys.path``) declare; returns the problems.

    Each refused declaration is logged as one line (``aligngym.envs`` logger, warning) and remembered, so
    making that id says why it is not there. Ids registered already (built-ins included) are never replaced.
    """
    found = scan(paths, taken=set(_ENTRIES) | set(gym.registry))
    for env_id, problem in found.problems:
        _log.warning("aligngym: warning: %s", problem)
        _REFUSED.setdefault(env_id, problem)
    for ep in found.envs:
        _add(_entry_of(ep))
    return [problem for _, problem in found.problems]


def _entry_of(ep: EntryPointEnv) -> EnvEntry:
    return EnvEntry(ep.id, ep.value, ep.multi_agent, package=ep.package, package_version=ep.version)


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
        if id in _REFUSED:
            raise EnvPackageError(f"{id} is not available: {_REFUSED[id]}") from None
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
    theirs = gym.registry.get(id)
    if _is_builtin(id) and (theirs is None or theirs.entry_point != entry.entry_point):
        # Something wrote over Gymnasium's entry for a built-in id (gym.register bypasses ours): refuse.
        raise EnvPackageError(f"{id}: Gymnasium's registry no longer points at aligngym's own environment")
    return gym.make(id, **kwargs)


if os.environ.get("ALIGNGYM_ENTRY_POINTS", "1") != "0":
    load_entry_points()
