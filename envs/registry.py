"""One registry for every aligngym environment, on top of Gymnasium's.

Single-agent environments are registered with ``gymnasium.register`` so ``gym.make`` works; the table here
adds what Gymnasium does not keep: a one-line description and the kind (single- or multi-agent).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

NAMESPACE = "aligngym"


@dataclass(frozen=True)
class EnvEntry:
    """What the registry knows about one environment id."""

    id: str
    entry_point: Callable[..., Any] | str
    description: str = ""
    multi_agent: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


_ENTRIES: dict[str, EnvEntry] = {}


class UnknownEnvError(KeyError):
    """An environment id that nobody registered; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(
    id: str,
    entry_point: Callable[..., Any] | str,
    *,
    description: str | None = None,
    multi_agent: bool = False,
    **kwargs: Any,
) -> None:
    """Register an environment class (or ``"module:Class"``) under ``id``; ``kwargs`` become its defaults."""
    if "/" not in id:
        raise ValueError(f"env id {id!r} needs a namespace, e.g. 'myproject/{id}'")
    if description is None:
        cls = entry_point if not isinstance(entry_point, str) else None
        description = (
            (getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]) if cls else ""
        )
    if not multi_agent:
        gym.register(id=id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)
    _ENTRIES[id] = EnvEntry(id, entry_point, description or "", multi_agent, dict(kwargs))


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


def make(id: str, **kwargs: Any) -> Any:
    """Build any registered environment: a gymnasium ``Env`` or, for multi-agent ids, a PettingZoo env."""
    entry = spec(id)
    if entry.multi_agent:
        factory = entry.entry_point
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(__import__(module, fromlist=[attr]), attr)
        return factory(**{**entry.kwargs, **kwargs})
    return gym.make(id, **kwargs)
