"""``make_sandbox``: build a sandbox backend by name."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from .base import Sandbox, SandboxConfig, Slot
from .local import LocalSandbox


class Backend(Protocol):
    """A backend's constructor: a sandbox for ``config``, in ``slot`` when a pool already took one."""

    def __call__(self, config: SandboxConfig, *, slot: Slot | None = None) -> Sandbox: ...


def _docker(config: SandboxConfig, *, slot: Slot | None = None) -> Sandbox:
    from .docker_backend import DockerSandbox  # imported on use: the docker SDK is not needed for "local"

    return DockerSandbox(config, slot=slot)


#: Backend name -> constructor (``Backend``); adding a backend is one entry here.
BACKENDS: dict[str, Backend] = {
    "local": LocalSandbox,
    "docker": _docker,
}


def make_sandbox(
    backend: str = "local", config: SandboxConfig | None = None, *, slot: Slot | None = None, **overrides: Any
) -> Sandbox:
    """Create a sandbox: ``make_sandbox("local", timeout=10, memory_mb=512, network=False)``.

    Keyword arguments are ``SandboxConfig`` fields and override those of ``config`` when both are given.
    ``slot``: a place under the cap already taken for this sandbox (``SandboxPool`` does); without one the
    backend takes its own, waiting up to ``slot_timeout``.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown sandbox backend {backend!r}; valid backends: {', '.join(sorted(BACKENDS))}"
        )
    if config is None:
        config = SandboxConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return BACKENDS[backend](config, slot=slot)
