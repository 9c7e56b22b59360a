"""A sandbox an environment holds for its episodes: taken from the shared pool, given back reset."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import Sandbox
from .pool import SandboxPool, get_pool


class SandboxLease:
    """A sandbox taken from the shared pool (``get_pool``) on first use and given back, reset, by ``release``.

    ``spec`` is a backend name ("local", "docker") or a ready sandbox object, which the caller keeps: then
    ``release`` leaves it alone.
    """

    def __init__(self, spec: str | Sandbox = "local", **config: Any):
        self.spec = spec
        self.config = config
        self._pool: SandboxPool | None = None
        self._sandbox: Sandbox | None = None

    @property
    def held(self) -> bool:
        """Whether a pooled sandbox is held now."""
        return self._sandbox is not None

    def _shared_pool(self, backend: str) -> SandboxPool:
        if self._pool is None:
            self._pool = get_pool(backend, **self.config)
        return self._pool

    def get(self) -> Sandbox:
        """The sandbox, taken from the pool the first time (blocks while the global cap is reached)."""
        if not isinstance(self.spec, str):
            return self.spec
        if self._sandbox is None:
            self._sandbox = self._shared_pool(self.spec).acquire()
        return self._sandbox

    async def aget(self) -> Sandbox:
        """``get`` for async code: waits for a slot without blocking the event loop."""
        if not isinstance(self.spec, str):
            return self.spec
        if self._sandbox is None:
            self._sandbox = await self._shared_pool(self.spec).aacquire()
        return self._sandbox

    def release(self) -> None:
        """Give a pooled sandbox back (the pool resets it); a caller's own sandbox is left alone."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None and self._pool is not None:
            self._pool.release(sandbox)

    async def arelease(self) -> None:
        """``release`` for async code: the reset (or a container's removal) runs off the event loop."""
        if self._sandbox is not None:
            await asyncio.to_thread(self.release)
