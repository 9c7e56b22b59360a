"""Who owns a sandbox resource: a process stamp that survives pid reuse, and a reaper for local leftovers
(``reaper.reap_local_orphans_once`` runs it, with the cgroup reaper, once per process)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .workdir import remove_tree

#: Prefix of a local sandbox's host directory; the owner's pid and start time follow it.
LOCAL_PREFIX = "aligngym-sandbox-"
_LOCAL_NAME = re.compile(re.escape(LOCAL_PREFIX) + r"(\d+)-(\d+)-")


def start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def start_stamp(pid: int) -> str | None:
    """``boot_id:start_ticks`` of a process (a reused pid gets another stamp), None when it does not exist."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{ticks}"


def local_dir_prefix() -> str:
    """The ``mkdtemp`` prefix for this process's local sandboxes (names its owner for the reaper)."""
    return f"{LOCAL_PREFIX}{os.getpid()}-{start_ticks(os.getpid())}-"


def reap_local_orphans(root: str | None = None) -> int:
    """Remove local sandbox directories whose owner process is gone (e.g. killed with SIGKILL); count them."""
    root = root or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        match = _LOCAL_NAME.match(name)
        if match and start_ticks(int(match.group(1))) != match.group(2):
            remove_tree(os.path.join(root, name))
            removed += 1
    return removed
