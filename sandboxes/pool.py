"""Warm sandboxes reused across episodes: ``SandboxPool`` and the shared ``get_pool``.

Pools count under the process-wide cap (``sandboxes.cap``) and share its lock: a pool takes a slot before it
creates a sandbox and hands it to the backend (``make_sandbox(..., slot=)``); its idle sandboxes keep their
slots but are closed whenever a creation elsewhere needs one (a pool is an ``IdleSource`` of the cap).

>>> pool = get_pool("local", timeout=10)   # one shared pool per (backend, config)
>>> with pool.sandbox() as sb:             # a clean sandbox; reset and kept warm when the block ends
...     sb.run("print(1)").stdout
'1\\n'
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .base import Sandbox, SandboxConfig, SandboxError, Slot
from .cap import GATE, register_idle_source, unregister_idle_source
from .factory import make_sandbox


# -- pools ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PoolStats:
    """Counters of one pool; ``peak`` is the most sandboxes it held at once (in use, idle or starting)."""

    created: int
    reused: int
    discarded: int
    in_use: int
    idle: int
    peak: int


class SandboxPool:
    """Sandboxes of one backend and config, handed out clean and kept warm between users."""

    # ``release`` resets a sandbox (runs killed, working directory emptied) before anyone else gets it; one
    # whose reset fails (a backend that cannot reset raises) is closed instead. ``size`` bounds the sandboxes
    # the pool holds at once (None: only the process-wide cap does). Idle sandboxes hold slots under the cap
    # but are closed whenever a creation elsewhere needs one.

    def __init__(
        self,
        backend: str = "local",
        size: int | None = None,
        config: SandboxConfig | None = None,
        **overrides: Any,
    ):
        if size is not None and size < 1:
            raise ValueError(f"pool size must be >= 1 or None, got {size!r}")
        self.backend, self.size = backend, size
        self.config = dataclasses.replace(config or SandboxConfig(), **overrides)
        self._idle: list[Sandbox] = []
        self._busy: weakref.WeakSet[Sandbox] = weakref.WeakSet()  # a dropped sandbox closes itself on GC
        self._starting = 0  # being created or reset: held, but in neither list
        self._counts = {"created": 0, "reused": 0, "discarded": 0, "peak": 0}
        self.closed = False
        with GATE.lock:
            _pools.add(self)
        register_idle_source(self)

    # -- taking ----------------------------------------------------------------------------------------
    def _step(self) -> Sandbox | Slot | str:
        """With the lock held: an idle sandbox, a slot to create one in, or "full" or "cap" (wait)."""
        if self.closed:
            raise SandboxError("the sandbox pool is closed")
        if self._idle:
            sandbox = self._idle.pop()
            self._busy.add(sandbox)
            self._counts["reused"] += 1
            return sandbox
        held = len(self._busy) + len(self._idle) + self._starting
        if self.size is not None and held >= self.size:
            return "full"
        slot = GATE.take()
        if slot is None:
            return "cap"
        self._starting += 1
        self._counts["peak"] = max(self._counts["peak"], held + 1)
        return slot

    def _timed_out(self, step: str, timeout: float) -> SandboxError:
        if step == "full":
            return SandboxError(
                f"no sandbox of this pool (size {self.size}) was released within {timeout:g}s"
            )
        return GATE.full_error(timeout)

    def acquire(self, timeout: float | None = None) -> Sandbox:
        """A clean sandbox: an idle one, else a new one once the pool size and the cap allow (waits)."""
        timeout = self.config.slot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with GATE.lock:
                step = self._step()
                waits = isinstance(step, str)
                evict = step == "cap" and GATE.any_idle()
                if waits and not evict and not GATE.wait(deadline):
                    raise self._timed_out(step, timeout)
            if evict:
                GATE.evict_idle()
            elif not waits:
                break
        return step if isinstance(step, Sandbox) else self._create(step)

    async def aacquire(self, timeout: float | None = None) -> Sandbox:
        """Async ``acquire``: waits without blocking the event loop."""
        timeout = self.config.slot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with GATE.lock:
                step = self._step()
                waits = isinstance(step, str)
                evict = step == "cap" and GATE.any_idle()
                woken = GATE.future() if waits and not evict else None
            if evict:
                await asyncio.to_thread(GATE.evict_idle)
            elif woken is not None:
                if not await GATE.await_wake(woken, deadline):
                    raise self._timed_out(step, timeout)
            else:
                break
        if isinstance(step, Sandbox):
            return step
        creation = asyncio.ensure_future(asyncio.to_thread(self._create, step))
        try:
            return await asyncio.shield(creation)
        except asyncio.CancelledError:
            creation.add_done_callback(self._adopt)  # it still starts: keep it warm for the next user
            raise

    def _create(self, slot: Slot) -> Sandbox:
        """Create a sandbox in the slot ``_step`` took: the backend holds it, or gives it back if unneeded."""
        try:
            sandbox = make_sandbox(self.backend, self.config, slot=slot)
        except BaseException:
            slot.release()  # the backend failed (giving the slot back twice does nothing)
            with GATE.lock:
                self._starting -= 1
                GATE.wake()
            raise
        with GATE.lock:
            self._starting -= 1
            self._busy.add(sandbox)
            self._counts["created"] += 1
            GATE.wake()
        return sandbox

    def _adopt(self, creation: asyncio.Future[Sandbox]) -> None:
        if creation.cancelled() or creation.exception() is not None:
            return
        with GATE.lock:
            sandbox = creation.result()
            self._busy.discard(sandbox)
            self._idle.append(sandbox)
            GATE.wake()

    # -- giving back -----------------------------------------------------------------------------------
    def release(self, sandbox: Sandbox) -> None:
        """Reset ``sandbox`` and keep it for the next user (closed instead if it cannot be reset)."""
        with GATE.lock:
            if sandbox not in self._busy:
                raise ValueError("this sandbox is not in use from this pool (released twice?)")
            self._busy.discard(sandbox)
            self._starting += 1  # still held while it resets, so the size bound stays exact
        reusable = self._reset(sandbox)
        with GATE.lock:
            self._starting -= 1
            keep = reusable and not self.closed
            if keep:
                self._idle.append(sandbox)
            else:
                self._counts["discarded"] += 1
            GATE.wake()
        if not keep:
            sandbox.close()

    async def arelease(self, sandbox: Sandbox) -> None:
        """Async ``release`` (the reset's file work runs in a thread)."""
        await asyncio.to_thread(self.release, sandbox)

    @staticmethod
    def _reset(sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is clean again (a backend that cannot reset raises, as does a failed reset)."""
        try:
            sandbox.reset()
        except Exception:
            return False
        return True

    # -- the cap's IdleSource --------------------------------------------------------------------------
    def has_idle(self) -> bool:
        """Whether an idle sandbox waits here (read under the cap's lock, which is this pool's too)."""
        return bool(self._idle)

    def evict_one(self) -> bool:
        """Close the longest idle sandbox so its slot frees up; False when none is idle."""
        with GATE.lock:
            if not self._idle:
                return False
            sandbox = self._idle.pop(0)
            self._counts["discarded"] += 1
        sandbox.close()  # frees its slot and wakes the waiters
        return True

    # -- scoped use, stats, closing ----------------------------------------------------------------
    @contextlib.contextmanager
    def sandbox(self, timeout: float | None = None) -> Iterator[Sandbox]:
        """``with pool.sandbox() as sb``: acquire, then release (reset) when the block ends."""
        sandbox = self.acquire(timeout)
        try:
            yield sandbox
        finally:
            self.release(sandbox)

    @contextlib.asynccontextmanager
    async def asandbox(self, timeout: float | None = None) -> AsyncIterator[Sandbox]:
        """``async with pool.asandbox() as sb``: the async twin of ``sandbox``."""
        sandbox = await self.aacquire(timeout)
        try:
            yield sandbox
        finally:
            await self.arelease(sandbox)

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        with GATE.lock:
            return PoolStats(in_use=len(self._busy), idle=len(self._idle), **self._counts)

    def close(self) -> None:
        """Close idle sandboxes now and those in use when they are released; later acquires fail."""
        with GATE.lock:
            self.closed = True
            idle, self._idle = self._idle, []
            _pools.discard(self)
            GATE.wake()
        unregister_idle_source(self)
        for sandbox in idle:
            sandbox.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_pools: weakref.WeakSet[SandboxPool] = weakref.WeakSet()
_shared: dict[tuple[str, int | None, str], SandboxPool] = {}
_shared_lock = threading.Lock()


def get_pool(
    backend: str = "local", *, size: int | None = None, config: SandboxConfig | None = None, **overrides: Any
) -> SandboxPool:
    """The process-wide pool for ``backend`` and this config (fields as keywords), created on first use."""
    cfg = dataclasses.replace(config or SandboxConfig(), **overrides)
    key = (backend, size, json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=repr))
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool.closed:
            pool = _shared[key] = SandboxPool(backend, size=size, config=cfg)
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in list(_pools):
        with contextlib.suppress(Exception):
            pool.close()
