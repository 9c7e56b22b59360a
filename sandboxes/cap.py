"""The process-wide hard cap on live sandboxes, and an optional cluster-wide one on top.

The cap counts every sandbox of every backend and pool: ``ALIGNGYM_MAX_SANDBOXES`` (default 32) sets it at
import, ``set_max_sandboxes(n)`` later. A ``ClusterGate`` (``set_cluster_gate``) adds a second, cluster-wide
cap that several processes share (e.g. Ray workers, ``sandboxes.quota``). Creating a sandbox takes a ``Slot``
(``acquire_slot``, or a pool takes one and hands it to the backend); closing it gives the slot back
(``Slot.release``). Past the cap, creation first closes an idle sandbox of a registered ``IdleSource`` (a
``SandboxPool``, the docker backend's warm spares) to make room, else waits (threads block, coroutines await)
until a sandbox closes, and raises ``SandboxError`` after ``SandboxConfig.slot_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from typing import Protocol

from .base import SandboxError, Slot

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


class IdleSource(Protocol):
    """A holder of idle sandboxes (warm, unused, holding slots) that the cap may close to make room."""

    def has_idle(self) -> bool:
        """Whether it holds an idle sandbox now; called with ``GATE.lock`` held, so it takes no other lock."""

    def evict_one(self) -> bool:
        """Close one idle sandbox (its slot comes back); False when none was left."""


class _CapSlot(Slot):
    """One counted place under the cap; ``release`` gives it back exactly once, whoever calls it."""

    __slots__ = ("_held", "_cluster")

    def __init__(self, cluster: ClusterGate | None) -> None:
        self._held = True
        self._cluster = cluster  # the gate that gave this slot its ticket, which gets the ticket back

    @property
    def held(self) -> bool:
        """Whether the place is still taken."""
        return self._held

    def release(self) -> None:
        """Give the place back and wake waiting creations; later calls do nothing."""
        with GATE.lock:  # reentrant: a sandbox collected while this thread holds the lock releases here
            if self._held:
                self._held = False
                GATE.give(self._cluster)


class Gate:
    """One lock for the cap and every pool; any change wakes blocked threads and awaiting coroutines."""

    def __init__(self) -> None:
        # Reentrant: a sandbox collected while this thread holds the lock releases its slot in __del__.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.used = 0
        self.limit = _limit_from_env()
        self.cluster: ClusterGate | None = None
        self.cluster_refused = False  # the last refusal came from the cluster, not from this process
        # Registration order is eviction order; weak, so a dropped pool is forgotten with it.
        self.idle_sources: list[weakref.ref[IdleSource]] = []

    def wake(self) -> None:
        """Wake every waiter; call with ``lock`` held."""
        self.cond.notify_all()
        for loop, future in self.futures:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, future)
        self.futures.clear()

    def take(self) -> Slot | None:
        """A slot if the cap (and the cluster's, when set) allows, else None; call with ``lock`` held."""
        self.cluster_refused = False
        if self.used >= self.limit:
            return None
        if self.cluster is not None and not self.cluster.take():
            self.cluster_refused = True
            return None
        self.used += 1
        return _CapSlot(self.cluster)

    def give(self, cluster: ClusterGate | None) -> None:
        """Count one slot back, and its ticket to ``cluster`` (once per slot: ``Slot.release``). Lock held."""
        if cluster is not None:
            with contextlib.suppress(Exception):  # may run from __del__ at shutdown
                cluster.give()
        self.used = max(0, self.used - 1)
        self.wake()

    def wait(self, deadline: float) -> bool:
        """Block until the next ``wake`` or ``deadline``; False when the deadline had passed. Lock held."""
        remaining = self._budget(deadline)
        if remaining <= 0:
            return False
        self.cond.wait(remaining)
        return True

    def future(self) -> asyncio.Future[None]:
        """A future the next ``wake`` settles (await it with ``await_wake`` after unlocking). Lock held."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.futures.append((loop, future))
        return future

    async def await_wake(self, future: asyncio.Future[None], deadline: float) -> bool:
        """Await a ``future`` until ``deadline``; False when the deadline had passed."""
        remaining = self._budget(deadline)
        if remaining <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(future, remaining)
        return True

    def _budget(self, deadline: float) -> float:
        # A cluster gate frees tickets in other processes, which wake nobody here: poll it instead.
        remaining = deadline - time.monotonic()
        return min(remaining, CLUSTER_POLL_S) if self.cluster is not None and remaining > 0 else remaining

    def full_error(self, timeout: float) -> SandboxError:
        """The error of a creation that found no free slot within ``timeout`` seconds."""
        if self.cluster_refused:
            return SandboxError(
                f"no sandbox slot became free within {timeout:g}s: the cluster-wide sandbox cap is reached "
                "(rollout --max-sandboxes); raise it or lower --workers/--concurrency"
            )
        return SandboxError(
            f"no sandbox slot became free within {timeout:g}s: {self.used} sandboxes are live and the cap "
            f"is {self.limit} (ALIGNGYM_MAX_SANDBOXES / set_max_sandboxes); "
            "close sandboxes you no longer need"
        )

    def sources(self) -> list[IdleSource]:
        """The idle sources still alive, in registration order."""
        return [source for ref in list(self.idle_sources) if (source := ref()) is not None]

    def any_idle(self) -> bool:
        """Whether any idle source holds an idle sandbox (call with ``lock`` held)."""
        return any(source.has_idle() for source in self.sources())

    def evict_idle(self) -> bool:
        """Close one idle sandbox of any source so its slot frees up; False when none is idle (unlocked)."""
        return any(source.evict_one() for source in self.sources())


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _limit_from_env() -> int:
    raw = os.environ.get("ALIGNGYM_MAX_SANDBOXES", "").strip()
    if raw and not (raw.isdigit() and int(raw) >= 1):
        raise ValueError(f"ALIGNGYM_MAX_SANDBOXES must be a positive integer, got {raw!r}")
    return int(raw) if raw else _DEFAULT_MAX


#: The one cap of this process.
GATE = Gate()


def set_max_sandboxes(n: int) -> None:
    """Set the process-wide cap on live sandboxes (all backends); waiters re-check at once."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the sandbox cap must be an integer >= 1, got {n!r}")
    with GATE.lock:
        GATE.limit = n
        GATE.wake()


def max_sandboxes() -> int:
    """The process-wide cap on live sandboxes."""
    return GATE.limit


def live_sandboxes() -> int:
    """How many sandboxes hold a slot now."""
    return GATE.used


def acquire_slot(timeout: float = 300.0) -> Slot:
    """Take a slot under the cap for a new sandbox, blocking up to ``timeout`` s; ``SandboxError`` after."""
    deadline = time.monotonic() + timeout
    while True:
        with GATE.lock:
            if (slot := GATE.take()) is not None:
                return slot
            if not GATE.any_idle() and not GATE.wait(deadline):
                raise GATE.full_error(timeout)
        GATE.evict_idle()


def try_acquire_slot() -> Slot | None:
    """A slot if one is free right now (never waits, never evicts), else None."""
    with GATE.lock:
        return GATE.take()


def evict_idle() -> bool:
    """Close one idle sandbox of any registered source; False when none is idle."""
    return GATE.evict_idle()


def register_idle_source(source: IdleSource) -> None:
    """Let the cap close ``source``'s idle sandboxes when a creation would otherwise wait (held weakly)."""
    with GATE.lock:
        GATE.idle_sources = [ref for ref in GATE.idle_sources if ref() is not None]
        GATE.idle_sources.append(weakref.ref(source))


def unregister_idle_source(source: IdleSource) -> None:
    """Stop offering ``source``'s idle sandboxes (it closed)."""
    with GATE.lock:
        GATE.idle_sources = [ref for ref in GATE.idle_sources if ref() not in (None, source)]


def set_cluster_gate(gate: ClusterGate | None) -> None:
    """Share a cluster-wide cap with other processes (None: only the process-wide cap)."""
    with GATE.lock:
        GATE.cluster = gate
        GATE.wake()
    if gate is not None:
        threading.Thread(target=_yield_idle_to_others, args=(gate,), daemon=True).start()


def _yield_idle_to_others(gate: ClusterGate) -> None:
    # Idle pooled sandboxes hold tickets; while another process waits for one, close them (as a creation here
    # would). Without this, a worker whose episodes ended would keep its warm sandboxes and starve the rest.
    while GATE.cluster is gate:
        time.sleep(CLUSTER_POLL_S)
        with contextlib.suppress(Exception):
            if GATE.any_idle() and gate.others_waiting():
                GATE.evict_idle()
