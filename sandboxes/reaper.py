"""What processes killed earlier left behind (local sandbox directories, docker lanes, cgroups), reaped once.

Its own module because it needs both ``owner`` (the directory reaper) and ``limits`` (the cgroup reaper),
and ``limits`` needs ``owner`` to name its cgroups after their owner.
"""

from __future__ import annotations

import threading

from .limits import reap_orphan_cgroups
from .owner import reap_local_orphans

_reaped = False
_reap_lock = threading.Lock()


def reap_local_orphans_once() -> None:
    """Run the local reapers the first time a sandbox is made in this process."""
    global _reaped
    with _reap_lock:
        if not _reaped:
            _reaped = True
            reap_local_orphans()
            reap_orphan_cgroups()
