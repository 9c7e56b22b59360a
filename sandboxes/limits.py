"""Resource limits for sandboxed programs: rlimits set by a tiny exec wrapper, and cgroup v2 when delegated."""

from __future__ import annotations

import errno
import functools
import math
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

#: Where cgroup v2 is mounted; a module attribute so tests can point it at a fake tree.
CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP_CONTROLLERS = ("memory", "pids", "cpu")

# Used only where util-linux's prlimit is missing; applies "NAME=VALUE,..." and execs the rest of argv.
_RLIMIT_SHIM = (
    "import os,resource,sys\n"
    "for item in filter(None, sys.argv[1].split(',')):\n"
    "    name, value = item.split('=')\n"
    "    resource.setrlimit(getattr(resource, 'RLIMIT_' + name.upper()), (int(value), int(value)))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def rlimit_prefix(limits: dict[str, int], python: str) -> list[str]:
    """Argv that sets ``limits`` (prlimit names: as, nproc, cpu, fsize, core) and then execs the argv after it."""
    prlimit = shutil.which("prlimit")
    if prlimit:
        # Setting limits in an exec wrapper instead of preexec_fn keeps process creation fork-safe in threads.
        return [prlimit, *(f"--{name}={value}" for name, value in limits.items()), "--"]
    spec = ",".join(f"{name}={value}" for name, value in limits.items())
    return [python, "-S", "-c", _RLIMIT_SHIM, spec]


def run_rlimits(
    limit: float,
    file_bytes: int,
    *,
    memory_bytes: int | None = None,
    nproc: int | None = None,
    nofile: int | None = None,
) -> dict[str, int]:
    """One run's rlimits by prlimit name: CPU seconds just past the wall limit, file size, no core dumps."""
    rlimits = {"cpu": math.ceil(limit) + 1, "fsize": file_bytes, "core": 0}
    for name, value in (("as", memory_bytes), ("nproc", nproc), ("nofile", nofile)):
        if value is not None:
            rlimits[name] = value
    return rlimits


def describe(mode: str, *, cgroup: bool, network: bool, fork_server: bool) -> dict[str, str]:
    """Which mechanism enforces each limit of a local sandbox in bwrap ``mode`` ("none": unisolated)."""
    isolated = mode != "none"
    if fork_server:
        # RLIMIT_NPROC counts the run's own user namespace; a cgroup, when there is one, holds the sandbox.
        memory, pids = (
            ("rlimit_as+cgroup", "rlimit_nproc+cgroup") if cgroup else ("rlimit_as", "rlimit_nproc")
        )
    else:
        # The kernel exempts host uid 0 from RLIMIT_NPROC, and outside a user namespace it counts every
        # process of the host user, so it only means "this run's processes" in these two cases.
        nproc = mode == "userns" or (mode == "classic" and os.geteuid() != 0)
        memory = "cgroup" if cgroup else "rlimit_as"
        pids = "cgroup" if cgroup else ("rlimit_nproc" if nproc else "none")
    return {
        "filesystem": "bwrap" if isolated else "none",
        "network": "netns" if isolated and not network else "none",
        "user": "uid 65534" if isolated else "none",
        "memory": memory,
        "pids": pids,
        "cpus": "cgroup" if cgroup else "none",
        "cpu_time": "rlimit_cpu",
        "file_size": "rlimit_fsize",
        "wall_time": "kill",
    }


def _read(path: str) -> str:
    return Path(path).read_text()


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> str | None:
    """A cgroup v2 directory under which per-run cgroups with memory and pids limits can be made, else None."""
    try:
        own = next(line[3:] for line in _read("/proc/self/cgroup").splitlines() if line.startswith("0::"))
        base = os.path.normpath(os.path.join(CGROUP_ROOT, own.strip().lstrip("/")))
        available = _read(os.path.join(base, "cgroup.controllers")).split()
        enabled = _read(os.path.join(base, "cgroup.subtree_control")).split()
    except (OSError, StopIteration):
        return None
    if not {"memory", "pids"} <= set(available):
        return None
    missing = [c for c in _CGROUP_CONTROLLERS if c in available and c not in enabled]
    try:
        if missing:
            # Fails (EBUSY) when this cgroup holds processes and is not the root: then rlimits are used instead.
            Path(base, "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        probe = os.path.join(base, f"aligngym-probe-{os.getpid()}")
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError:
        return None
    return base


class Cgroup:
    """One run's cgroup v2: memory, pids and CPU limits, an OOM counter and a kill switch for the whole tree."""

    def __init__(self, parent: str, *, memory_bytes: int, pids: int, cpus: float):
        self.path = os.path.join(parent, f"aligngym-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        os.mkdir(self.path)
        try:
            self._write("memory.max", str(memory_bytes))
            self._write("pids.max", str(pids))
            self._write("memory.swap.max", "0", required=False)
            self._write("cpu.max", f"{max(1000, int(cpus * 100_000))} 100000", required=False)
        except OSError:
            self.remove()
            raise

    def _write(self, name: str, value: str, required: bool = True) -> None:
        try:
            Path(self.path, name).write_text(value)
        except OSError:
            if required:
                raise

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` behind a shell that first moves itself into this cgroup, so nothing runs outside it."""
        return [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            os.path.join(self.path, "cgroup.procs"),
            *argv,
        ]

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup so far."""
        try:
            events = dict(
                line.split() for line in _read(os.path.join(self.path, "memory.events")).splitlines()
            )
            return int(events.get("oom_kill", 0))
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed anything in this cgroup."""
        return self.oom_kills() > 0

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        try:
            Path(self.path, "cgroup.kill").write_text("1")
            return
        except OSError:
            pass
        try:
            pids = _read(os.path.join(self.path, "cgroup.procs")).split()
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass

    def remove(self) -> None:
        """Kill what is left and delete the cgroup (best effort)."""
        self.kill()
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError as exc:
                # EBUSY while killed processes are still being torn down; anything else will not improve.
                if exc.errno != errno.EBUSY:
                    return
                time.sleep(0.01)
