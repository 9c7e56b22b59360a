"""``make_sandbox``: build a sandbox backend by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .base import Sandbox, SandboxConfig
from .local import LocalSandbox


def _docker(config: SandboxConfig) -> Sandbox:
    from .docker_backend import DockerSandbox  # imported on use: the docker SDK is not needed for "local"

    return DockerSandbox(config)


#: Backend name -> constructor taking a ``SandboxConfig``; adding a backend is one entry here.
BACKENDS: dict[str, Callable[[SandboxConfig], Sandbox]] = {
    "local": LocalSandbox,
    "docker": _docker,
}


def make_sandbox(backend: str = "local", config: SandboxConfig | None = None, **overrides: Any) -> Sandbox:
    """Create a sandbox: ``make_sandbox("local", timeout=10, memory_mb=512, network=False)``.

    Keyword arguments are ``SandboxConfig`` fields and override those of ``config`` when both are given.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown sandbox backend {backend!r}; valid backends: {', '.join(sorted(BACKENDS))}"
        )
    if config is None:
        config = SandboxConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return BACKENDS[backend](config)
