"""Resource limits for sandboxed programs: rlimits set by a tiny exec wrapper, plus a cgroup where one can be
made (a delegated cgroup v2 subtree, else the cgroup v1 memory/pids/cpu/freezer controllers, e.g. as root)."""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path

from .owner import start_ticks

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
    # -I: the shim starts in the working directory with PYTHONPATH set; nothing there may shadow its imports.
    return [python, "-I", "-S", "-c", _RLIMIT_SHIM, spec]


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
        memory, pids = ("cgroup", "rlimit_nproc+cgroup") if cgroup else ("rlimit_as", "rlimit_nproc")
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
def cgroup_v2_parent() -> str | None:
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


@functools.lru_cache(maxsize=1)
def cgroup_v1_parents() -> dict[str, str] | None:
    """This process's own cgroup v1 directories (controller -> dir) where children can be made, else None.

    The memory controller is required (it is the point: one memory account for a whole process tree);
    pids and cpu are used when they are there too. Children go under our own cgroups, so whatever limits
    the host put on us still hold for the sandboxes.
    """
    try:
        lines = _read("/proc/self/cgroup").splitlines()
    except OSError:
        return None
    own = {}
    for line in lines:
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            own[name] = path
    parents = {}
    # freezer: a tree is frozen before it is killed, so no process sees a child die and acts on it.
    for controller in ("memory", "pids", "cpu", "freezer"):
        if controller not in own:
            continue
        base = os.path.normpath(os.path.join(CGROUP_ROOT, controller, own[controller].lstrip("/")))
        probe = os.path.join(base, f"aligngym-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError:
            continue
        parents[controller] = base
    return parents if "memory" in parents else None


def cgroup_parent() -> str | dict[str, str] | None:
    """Where per-run cgroups go: a cgroup v2 directory, cgroup v1 controller directories, or None (rlimits)."""
    return cgroup_v2_parent() or cgroup_v1_parents()


def new_cgroup(parent: str | dict[str, str], *, memory_bytes: int, pids: int, cpus: float) -> Cgroup:
    """A cgroup under ``parent`` (from ``cgroup_parent``) holding a process tree to these limits."""
    kind = CgroupV1 if isinstance(parent, dict) else Cgroup
    return kind(parent, memory_bytes=memory_bytes, pids=pids, cpus=cpus)


_CGROUP_NAME = re.compile(r"aligngym-(\d+)-(\d+)-[0-9a-f]+$")


def _cgroup_name() -> str:
    # Owner pid and start time, so a reaper can tell cgroups left by a process killed with SIGKILL.
    return f"aligngym-{os.getpid()}-{start_ticks(os.getpid())}-{uuid.uuid4().hex[:12]}"


def reap_orphan_cgroups() -> int:
    """Kill what is left in, and remove, the cgroups of owners that are gone; count them."""
    parent = cgroup_parent()
    bases = list(parent.values()) if isinstance(parent, dict) else [parent] if parent else []
    orphans = []
    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = _CGROUP_NAME.match(name)
            if match and start_ticks(int(match.group(1))) != match.group(2):
                orphans.append(Cgroup.existing(os.path.join(base, name)))
    for orphan in orphans:  # first, so no controller's removal waits on tasks frozen in another
        if os.path.exists(os.path.join(orphan.path, "freezer.state")):
            _thaw(orphan.path)  # its owner died mid-kill: frozen tasks would never act on their SIGKILL
    removed = 0
    for orphan in orphans:
        orphan.remove()
        removed += not os.path.exists(orphan.path)
    return removed


class Cgroup:
    """One run's cgroup v2: memory, pids and CPU limits, an OOM counter and a kill switch for the whole tree."""

    #: The file whose ``oom_kill`` line counts the kernel's OOM kills in this cgroup.
    OOM_FILE = "memory.events"

    def __init__(self, parent: str, *, memory_bytes: int, pids: int, cpus: float):
        self.path = os.path.join(parent, _cgroup_name())
        os.mkdir(self.path)
        try:
            self._write("memory.max", str(memory_bytes))
            self._write("pids.max", str(pids))
            self._write("memory.swap.max", "0", required=False)
            self._write("cpu.max", f"{max(1000, int(cpus * 100_000))} 100000", required=False)
        except OSError:
            self.remove()
            raise

    @classmethod
    def existing(cls, path: str) -> Cgroup:
        """A handle on a cgroup directory made earlier (any version), enough to ``kill`` and ``remove`` it."""
        cgroup = cls.__new__(cls)
        cgroup.path = path
        return cgroup

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
            fields = dict(line.split() for line in _read(os.path.join(self.path, self.OOM_FILE)).splitlines())
            return int(fields.get("oom_kill", 0))
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed anything in this cgroup."""
        return self.oom_kills() > 0

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        try:
            Path(self.path, "cgroup.kill").write_text("1")  # atomic, where the kernel has it (5.14+)
            return
        except OSError:
            pass
        self._kill_listed()

    def dirs(self) -> list[str]:
        """Its directories (one per controller on cgroup v1)."""
        return [self.path]

    def _kill_listed(self, passes: int = 20) -> None:
        """SIGKILL the processes the cgroup lists, again while forks race the kill."""
        for attempt in range(passes):
            if attempt:
                time.sleep(0.005)  # let the killed go, and forks in flight land
            pids = self._listed()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass

    def _listed(self) -> set[str]:
        pids: set[str] = set()
        for path in self.dirs():
            with contextlib.suppress(OSError):
                pids.update(_read(os.path.join(path, "cgroup.procs")).split())
        return pids

    def remove(self) -> None:
        """Kill what is left and delete the cgroup (best effort)."""
        self.kill()
        for path in self.dirs():
            for attempt in range(60):
                try:
                    os.rmdir(path)
                    break
                except OSError as exc:
                    # EBUSY while killed processes are still being torn down; anything else will not improve.
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(min(0.0005 * 2**attempt, 0.05))  # usually free within a millisecond or two


class CgroupV1(Cgroup):
    """The cgroup v1 twin of ``Cgroup``: one directory per controller, the same name in each."""

    OOM_FILE = "memory.oom_control"

    def dirs(self) -> list[str]:
        """One directory per controller."""
        return list(self.paths.values())

    def __init__(self, parents: dict[str, str], *, memory_bytes: int, pids: int, cpus: float):
        name = _cgroup_name()
        self.paths = {controller: os.path.join(base, name) for controller, base in parents.items()}
        self.path = self.paths["memory"]
        try:
            for path in self.paths.values():
                os.mkdir(path)
            self._write("memory.limit_in_bytes", str(memory_bytes))
            # memsw (memory + swap) must not be below the memory limit: set it second. Absent without swap.
            self._write("memory.memsw.limit_in_bytes", str(memory_bytes), required=False)
            if "pids" in self.paths:
                Path(self.paths["pids"], "pids.max").write_text(str(pids))
            if "cpu" in self.paths:
                Path(self.paths["cpu"], "cpu.cfs_period_us").write_text("100000")
                Path(self.paths["cpu"], "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * 100_000))))
        except OSError:
            self.remove()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` behind a shell that first joins every controller's cgroup, so nothing runs outside them."""
        procs = [os.path.join(path, "cgroup.procs") for path in self.paths.values()]
        script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", str(len(procs)), *procs, *argv]

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, frozen first where the freezer controller is there."""
        # v1 has no cgroup.kill. Killed one by one, a parent can wake between its child's kill and its own
        # and still run: write a file, print. Frozen, nothing runs until all are killed and it is thawed.
        if not self._listed():
            return  # the usual case at removal: nothing to freeze
        freezer = self.paths.get("freezer")
        frozen = freezer is not None and _freeze(freezer)
        try:
            self._kill_listed(passes=1 if frozen else 20)  # frozen: nothing forks, and nothing dies yet
        finally:
            if frozen:
                _thaw(freezer)
        self._kill_listed()  # whatever a fork in flight left


def _freeze(path: str, wait_s: float = 0.5) -> bool:
    """Freeze a v1 freezer cgroup; True once the kernel says FROZEN (a task stuck in the kernel can delay it)."""
    state = os.path.join(path, "freezer.state")
    try:
        Path(state).write_text("FROZEN")
        deadline = time.monotonic() + wait_s
        while _read(state).strip() != "FROZEN":
            if time.monotonic() > deadline:
                return True  # partly frozen still narrows the window; thaw it all the same
            time.sleep(0.001)
    except OSError:
        return False
    return True


def _thaw(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path, "freezer.state").write_text("THAWED")
