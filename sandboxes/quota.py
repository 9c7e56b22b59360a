"""A cluster-wide cap on live sandboxes for Ray rollouts: one small actor hands out tickets.

Each worker process installs a ``RayQuotaGate`` as its cluster gate (``cap.set_cluster_gate``): creating a
sandbox takes a ticket, closing it gives the ticket back. A refused worker polls; while it waits, the others
close their idle pooled sandboxes so tickets flow to where episodes need them. When a worker dies, the driver calls
``forget`` with its name: its sandboxes died with it (local) or are reaped by owner label (docker).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

#: How long a refusal counts as "this holder is waiting" (it is renewed by every poll).
WAIT_MARK_S = 1.0


class SandboxQuota:
    """The actor body: a counting semaphore that knows who holds each ticket and who is waiting."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the cluster sandbox cap must be >= 1, got {limit}")
        self.limit = limit
        self.held: Counter[str] = Counter()
        self.waiting: dict[str, float] = {}
        self.peak = 0

    def take(self, holder: str) -> bool:
        """A ticket for ``holder`` if one is free; else remember that it waits."""
        if sum(self.held.values()) < self.limit:
            self.held[holder] += 1
            self.waiting.pop(holder, None)
            self.peak = max(self.peak, sum(self.held.values()))
            return True
        self.waiting[holder] = time.monotonic() + WAIT_MARK_S
        return False

    def give(self, holder: str) -> None:
        """``holder`` closed a sandbox."""
        if self.held[holder] > 0:
            self.held[holder] -= 1

    def others_waiting(self, holder: str) -> bool:
        """Whether a holder other than ``holder`` was refused in the last ``WAIT_MARK_S`` seconds."""
        now = time.monotonic()
        return any(until > now for name, until in self.waiting.items() if name != holder)

    def forget(self, holder: str) -> None:
        """Drop a dead holder's tickets."""
        self.held.pop(holder, None)
        self.waiting.pop(holder, None)

    def stats(self) -> dict[str, Any]:
        """``limit``, ``live`` tickets now and the ``peak`` held at once."""
        return {"limit": self.limit, "live": sum(self.held.values()), "peak": self.peak}


class RayQuotaGate:
    """A ``cap.ClusterGate`` backed by a ``SandboxQuota`` actor (installed in each worker)."""

    def __init__(self, quota: Any, holder: str, timeout_s: float = 30.0):
        self.quota, self.holder, self.timeout_s = quota, holder, timeout_s

    def take(self) -> bool:
        """Ask the quota actor for a ticket."""
        import ray

        return bool(ray.get(self.quota.take.remote(self.holder), timeout=self.timeout_s))

    def give(self) -> None:
        """Hand a ticket back without waiting for the reply."""
        self.quota.give.remote(self.holder)

    def others_waiting(self) -> bool:
        """Whether another worker waits for a ticket."""
        import ray

        return bool(ray.get(self.quota.others_waiting.remote(self.holder), timeout=self.timeout_s))
