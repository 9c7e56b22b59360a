"""Warm sandboxes reused across episodes, and a process-wide hard cap on live sandboxes.

The cap counts every sandbox of every backend and pool: ``ALIGNGYM_MAX_SANDBOXES`` (default 32) sets it at
import, ``set_max_sandboxes(n)`` later. A ``ClusterGate`` (``set_cluster_gate``) adds a second, cluster-wide
cap that several processes share (e.g. Ray workers, ``aligngym.sandbox_quota``). A backend takes a slot when
it creates a sandbox (``acquire_slot``) and gives it back when the sandbox closes (``release_slot``). Past the
cap, creation first closes an idle pooled sandbox to make room, else waits (threads block, coroutines await)
until a sandbox closes, and raises ``SandboxError`` after ``SandboxConfig.slot_timeout`` seconds.

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
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from .base import Sandbox, SandboxConfig, SandboxError

_DEFAULT_MAX = 32
#: How often a process re-asks a cluster gate that said no, and checks whether others wait for its idle ones.
CLUSTER_POLL_S = 0.1


class ClusterGate(Protocol):
    """A cap shared by several processes: one ticket per live sandbox, on top of the process-wide cap."""

    def take(self) -> bool:
        """Take a ticket if one is free now (never waits); a refusal records that this process is waiting."""

    def give(self) -> None:
        """Give a ticket back (fire and forget; called when a sandbox closes)."""

    def others_waiting(self) -> bool:
        """Whether another process is waiting for a ticket (then this one closes its idle sandboxes)."""


class _Gate:
    """One lock for the cap and every pool; any change wakes blocked threads and awaiting coroutines."""

    def __init__(self) -> None:
        # Reentrant: a sandbox garbage-collected while this thread holds the lock releases its slot in __del__.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.used = 0
        self.limit = _limit_from_env()
        self.cluster: ClusterGate | None = None
        self.cluster_refused = False  # the last refusal came from the cluster, not from this process

    def wake(self) -> None:
        """Wake every waiter; call with ``lock`` held."""
        self.cond.notify_all()
        for loop, future in self.futures:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, future)
        self.futures.clear()

    def try_take(self) -> bool:
        """Take a slot if the cap (and the cluster's, when set) allows; call with ``lock`` held."""
        self.cluster_refused = False
        if self.used >= self.limit:
            return False
        if self.cluster is not None and not self.cluster.take():
            self.cluster_refused = True
            return False
        self.used += 1
        return True

    def wait(self, deadline: float) -> bool:
        """Block until the next ``wake`` or ``deadline``; False when the deadline had passed. Lock held."""
        remaining = _wait_budget(deadline)
        if remaining <= 0:
            return False
        self.cond.wait(remaining)
        return True

    def future(self) -> asyncio.Future[None]:
        """A future the next ``wake`` settles (await it with ``_await_wake`` after unlocking). Lock held."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.futures.append((loop, future))
        return future


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wait_budget(deadline: float) -> float:
    # A cluster gate frees tickets in other processes, which wake nobody here: poll it instead.
    remaining = deadline - time.monotonic()
    return min(remaining, CLUSTER_POLL_S) if _gate.cluster is not None and remaining > 0 else remaining


async def _await_wake(future: asyncio.Future[None], deadline: float) -> bool:
    """Await a ``_Gate.future`` until ``deadline``; False when the deadline had passed."""
    remaining = _wait_budget(deadline)
    if remaining <= 0:
        return False
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(future, remaining)
    return True


def _limit_from_env() -> int:
    raw = os.environ.get("ALIGNGYM_MAX_SANDBOXES", "").strip()
    if raw and not (raw.isdigit() and int(raw) >= 1):
        raise ValueError(f"ALIGNGYM_MAX_SANDBOXES must be a positive integer, got {raw!r}")
    return int(raw) if raw else _DEFAULT_MAX


# -- the process-wide cap ---------------------------------------------------------------------------
_gate = _Gate()
# A slot a pool already took for the sandbox its (worker) thread is creating: the backend's acquire uses it.
_prepaid = threading.local()


def set_max_sandboxes(n: int) -> None:
    """Set the process-wide cap on live sandboxes (all backends); waiters re-check at once."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the sandbox cap must be an integer >= 1, got {n!r}")
    with _gate.lock:
        _gate.limit = n
        _gate.wake()


def max_sandboxes() -> int:
    """The process-wide cap on live sandboxes."""
    return _gate.limit


def live_sandboxes() -> int:
    """How many sandboxes hold a slot now."""
    return _gate.used


def _full_error(timeout: float) -> SandboxError:
    if _gate.cluster_refused:
        return SandboxError(
            f"no sandbox slot became free within {timeout:g}s: the cluster-wide sandbox cap is reached "
            "(rollout --max-sandboxes); raise it or lower --workers/--concurrency"
        )
    return SandboxError(
        f"no sandbox slot became free within {timeout:g}s: {_gate.used} sandboxes are live and the cap "
        f"is {_gate.limit} (ALIGNGYM_MAX_SANDBOXES / set_max_sandboxes); close sandboxes you no longer need"
    )


def acquire_slot(timeout: float = 300.0) -> None:
    """Take a slot under the cap for a new sandbox, blocking up to ``timeout`` s; ``SandboxError`` after."""
    if getattr(_prepaid, "slots", 0):
        _prepaid.slots -= 1
        return
    deadline = time.monotonic() + timeout
    while True:
        with _gate.lock:
            if _gate.try_take():
                return
            if not _any_idle() and not _gate.wait(deadline):
                raise _full_error(timeout)
        _evict_idle()


async def aacquire_slot(timeout: float = 300.0) -> None:
    """Async ``acquire_slot``: awaits (never blocks the loop); cancelling it never leaks a slot."""
    deadline = time.monotonic() + timeout
    while True:
        with _gate.lock:
            if _gate.try_take():
                return
            woken = None if _any_idle() else _gate.future()
        if woken is None:
            await asyncio.to_thread(_evict_idle)
        elif not await _await_wake(woken, deadline):
            raise _full_error(timeout)


def try_acquire_slot() -> bool:
    """Take a slot if one is free right now (never waits, never evicts)."""
    if getattr(_prepaid, "slots", 0):
        _prepaid.slots -= 1
        return True
    with _gate.lock:
        return _gate.try_take()


#: Other holders of idle sandboxes (e.g. the docker backend's warm spares): (has_idle, evict_one) pairs.
#: ``has_idle`` is called with the cap's lock held, so it must not take locks of its own.
_idle_sources: list[tuple[Callable[[], bool], Callable[[], bool]]] = []


def register_idle_source(has_idle: Callable[[], bool], evict_one: Callable[[], bool]) -> None:
    """Let the cap evict another component's idle sandboxes when a creation would otherwise wait."""
    _idle_sources.append((has_idle, evict_one))


def release_slot() -> None:
    """Give back a slot when a sandbox closes; wakes waiting creations."""
    with _gate.lock:
        if _gate.used and _gate.cluster is not None:
            with contextlib.suppress(Exception):  # may run from __del__ at shutdown
                _gate.cluster.give()
        _gate.used = max(0, _gate.used - 1)
        _gate.wake()


def set_cluster_gate(gate: ClusterGate | None) -> None:
    """Share a cluster-wide cap with other processes (None: only the process-wide cap)."""
    with _gate.lock:
        _gate.cluster = gate
        _gate.wake()
    if gate is not None:
        threading.Thread(target=_yield_idle_to_others, args=(gate,), daemon=True).start()


def _yield_idle_to_others(gate: ClusterGate) -> None:
    # Idle pooled sandboxes hold tickets; while another process waits for one, close them (as a creation here
    # would). Without this, a worker whose episodes ended would keep its warm sandboxes and starve the rest.
    while _gate.cluster is gate:
        time.sleep(CLUSTER_POLL_S)
        with contextlib.suppress(Exception):
            if _any_idle() and gate.others_waiting():
                _evict_idle()


def _any_idle() -> bool:
    return any(pool._idle for pool in list(_pools)) or any(has() for has, _ in list(_idle_sources))


def _evict_idle() -> bool:
    """Close one idle sandbox (any pool or idle source) so its slot frees up; False when none is idle."""
    return any(pool._evict_one() for pool in list(_pools)) or any(ev() for _, ev in list(_idle_sources))


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
    # whose backend cannot reset (no ``reset`` method), or whose reset fails, is closed instead. ``size``
    # bounds the sandboxes the pool holds at once (None: only the process-wide cap does). Idle sandboxes
    # hold slots under the cap but are closed whenever a creation elsewhere needs one.

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
        with _gate.lock:
            _pools.add(self)

    # -- taking ----------------------------------------------------------------------------------------
    def _step(self) -> Sandbox | str:
        """With the lock held: an idle sandbox, or "create" (a slot is ours now), "full" or "cap" (wait)."""
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
        if not _gate.try_take():
            return "cap"
        self._starting += 1
        self._counts["peak"] = max(self._counts["peak"], held + 1)
        return "create"

    def _timed_out(self, step: str, timeout: float) -> SandboxError:
        if step == "full":
            return SandboxError(
                f"no sandbox of this pool (size {self.size}) was released within {timeout:g}s"
            )
        return _full_error(timeout)

    def acquire(self, timeout: float | None = None) -> Sandbox:
        """A clean sandbox: an idle one, else a new one once the pool size and the cap allow (waits)."""
        timeout = self.config.slot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with _gate.lock:
                step = self._step()
                evict = step == "cap" and _any_idle()
                if step in ("full", "cap") and not evict and not _gate.wait(deadline):
                    raise self._timed_out(step, timeout)
            if evict:
                _evict_idle()
            elif step not in ("full", "cap"):
                break
        return step if isinstance(step, Sandbox) else self._create()

    async def aacquire(self, timeout: float | None = None) -> Sandbox:
        """Async ``acquire``: waits without blocking the event loop."""
        timeout = self.config.slot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            with _gate.lock:
                step = self._step()
                evict = step == "cap" and _any_idle()
                woken = _gate.future() if step in ("full", "cap") and not evict else None
            if evict:
                await asyncio.to_thread(_evict_idle)
            elif woken is not None:
                if not await _await_wake(woken, deadline):
                    raise self._timed_out(step, timeout)
            else:
                break
        if isinstance(step, Sandbox):
            return step
        creation = asyncio.ensure_future(asyncio.to_thread(self._create))
        try:
            return await asyncio.shield(creation)
        except asyncio.CancelledError:
            creation.add_done_callback(self._adopt)  # it still starts: keep it warm for the next user
            raise

    def _create(self) -> Sandbox:
        """Create a sandbox in the slot ``_step`` took (the backend's ``acquire_slot`` finds it prepaid)."""
        from .factory import make_sandbox  # factory imports the backends, which import this module

        _prepaid.slots = 1
        try:
            sandbox = make_sandbox(self.backend, self.config)
        except BaseException:
            with _gate.lock:
                self._starting -= 1
                _gate.wake()
            raise
        finally:
            if _prepaid.slots:  # the backend failed before taking it, or does not count itself
                _prepaid.slots = 0
                release_slot()
        with _gate.lock:
            self._starting -= 1
            self._busy.add(sandbox)
            self._counts["created"] += 1
            _gate.wake()
        return sandbox

    def _adopt(self, creation: asyncio.Future[Sandbox]) -> None:
        if creation.cancelled() or creation.exception() is not None:
            return
        with _gate.lock:
            sandbox = creation.result()
            self._busy.discard(sandbox)
            self._idle.append(sandbox)
            _gate.wake()

    # -- giving back -----------------------------------------------------------------------------------
    def release(self, sandbox: Sandbox) -> None:
        """Reset ``sandbox`` and keep it for the next user (closed instead if it cannot be reset)."""
        with _gate.lock:
            if sandbox not in self._busy:
                raise ValueError("this sandbox is not in use from this pool (released twice?)")
            self._busy.discard(sandbox)
            self._starting += 1  # still held while it resets, so the size bound stays exact
        reusable = self._reset(sandbox)
        with _gate.lock:
            self._starting -= 1
            keep = reusable and not self.closed
            if keep:
                self._idle.append(sandbox)
            else:
                self._counts["discarded"] += 1
            _gate.wake()
        if not keep:
            sandbox.close()

    async def arelease(self, sandbox: Sandbox) -> None:
        """Async ``release`` (the reset's file work runs in a thread)."""
        await asyncio.to_thread(self.release, sandbox)

    @staticmethod
    def _reset(sandbox: Sandbox) -> bool:
        reset = getattr(sandbox, "reset", None)
        if reset is None:
            return False
        try:
            reset()
        except Exception:
            return False
        return True

    def _evict_one(self) -> bool:
        with _gate.lock:
            if not self._idle:
                return False
            sandbox = self._idle.pop(0)  # the longest idle
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
        with _gate.lock:
            return PoolStats(in_use=len(self._busy), idle=len(self._idle), **self._counts)

    def close(self) -> None:
        """Close idle sandboxes now and those in use when they are released; later acquires fail."""
        with _gate.lock:
            self.closed = True
            idle, self._idle = self._idle, []
            _pools.discard(self)
            _gate.wake()
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
