"""Hostile programs against every sandbox backend (``local`` bubblewrap and ``docker``).

Each attack must end with the right ``status``, leave no process behind (checked from the host), change
nothing on the host, reach nothing on it, and leave the harness answering.

Every hostile Python program re-execs itself with a unique marker as its last argument, so the host finds
all of its processes (forks and threads included) by scanning ``/proc/*/cmdline``, whichever backend ran
them: container processes are host processes too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass

import pytest
from _helpers import docker_up

from aligngym.sandboxes import (
    LocalSandbox,
    RunResult,
    Sandbox,
    SandboxError,
    bwrap_available,
    make_sandbox,
)
from aligngym.sandboxes.pool import SandboxPool

TIMEOUT = 2.0
CAP = 256 << 10  # bytes kept per output stream
FILE_MB = 16
LIMITS = {"timeout": TIMEOUT, "memory_mb": 256, "pids": 64, "max_file_mb": FILE_MB, "max_output_bytes": CAP}
#: The whole process tree must be gone this long after the wall limit (and after the run returned).
KILL_GRACE_S = 1.0


BACKENDS = [
    pytest.param(
        "local",
        id="local",
        marks=pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here"),
    ),
    pytest.param(
        "docker",
        id="docker",
        marks=[
            pytest.mark.docker,
            pytest.mark.skipif(not docker_up(), reason="`docker info` fails; start one: .ci/dockerd.sh"),
        ],
    ),
]


# -- hostile programs and the host's view of them ----------------------------------------------------
class Hostile:
    """A Python program whose every process carries a unique marker in its command line."""

    def __init__(self, body: str):
        self.marker = f"aligngym-hostile-{uuid.uuid4().hex[:12]}"
        body = "import os, sys\n" + textwrap.dedent(body)
        # A fresh interpreter with the marker in argv; what it forks inherits that command line.
        self.code = (
            f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {body!r}, {self.marker!r}])\n"
        )

    def pids(self) -> list[int]:
        """Host pids of live processes of this program (zombies have an empty command line)."""
        return marker_pids(self.marker)


def marker_pids(marker: str) -> list[int]:
    needle, found = marker.encode(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every host process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(name)] = (int(stat[stat.rindex(b")") + 2 :].split()[1]), cmdline)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """pid -> command line of every live descendant of ``root``."""
    table = table if table is not None else _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo += children.get(pid, [])
    return found


@dataclass
class Watched:
    """One run watched from the host: its result, when it started and returned, and its processes."""

    result: RunResult
    started: float
    returned: float
    gone: float  # when the last of its processes had disappeared
    peak: int  # most of its processes seen alive at once during the run
    leftover: list[int]  # its processes still alive when we stopped waiting
    peak_rss_mb: int  # most resident memory its processes held at once (summed, shared pages counted twice)
    late: dict  # pid -> /proc/PID/stat of each of its processes still seen after the run returned


def run_watched(
    sb: Sandbox,
    program: Hostile,
    *,
    timeout: float | None = None,
    stdin: str | bytes | None = None,
    language: str = "python",
    code: str | None = None,
) -> Watched:
    """Run ``program`` in ``sb`` while scanning the host for its processes, then wait for them to go."""

    def call() -> tuple[RunResult, float]:
        result = sb.run(code or program.code, language=language, stdin=stdin, timeout=timeout)
        return result, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        started = time.monotonic()
        future = worker.submit(call)
        peak = peak_rss = 0
        while not future.done():
            pids = program.pids()
            peak, peak_rss = max(peak, len(pids)), max(peak_rss, _rss_mb(pids))
            time.sleep(0.02)
        result, returned = future.result()
    deadline, late = time.monotonic() + 5.0, {}
    while True:
        # A scan that finds nothing means the tree was gone when it began (reading /proc/PID/cmdline can block
        # for a while on a process that is tearing down its memory, or on another test's memory hog).
        scanned = time.monotonic()
        leftover = program.pids()
        if not leftover or scanned > deadline:
            break
        for pid in leftover:  # what outlived the run, for the failure message
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                late.setdefault(pid, f"{time.monotonic() - returned:.2f}s after: {f.read()[:120]}")
        time.sleep(0.01)
    return Watched(result, started, returned, scanned, peak, leftover, peak_rss, late)


def _rss_mb(pids: list[int]) -> int:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
            total_kb += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    return total_kb >> 10


def assert_tree_dead(w: Watched, *, wall_limit: float | None = None) -> None:
    """Nothing of the program is alive 1 s after the run returned (and 1 s after the wall limit, if hit)."""
    assert w.leftover == [], f"processes outlived the run: {w.leftover}"
    assert w.gone - w.returned <= KILL_GRACE_S, (
        f"tree took {w.gone - w.returned:.2f}s to die after the run: {w.late}"
    )
    if wall_limit is not None:
        late = w.gone - w.started - wall_limit
        assert late <= KILL_GRACE_S, f"tree died {late:.2f}s after the {wall_limit}s wall limit"


# Lists the pids in the sandbox's /proc that are not this program or its ancestors. /proc is the container's
# (ancestors: the executor) or, in the local fork server, bwrap's pid namespace, not the run's own (ancestors:
# the run's init, the server and bwrap), so pids are taken from /proc itself, never from os.getpid().
OTHER_PIDS = """
import os, time
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None  # gone meanwhile
def ancestry():
    # Retried when an ancestor vanishes mid-walk (the harness's short-lived helper that forked our init).
    for _ in range(100):
        mine, pid = set(), int(os.readlink("/proc/self"))
        while pid > 0 and (fields := stat(pid)) is not None:
            mine.add(pid)
            pid = int(fields[1])
        if pid == 0:
            return mine
        time.sleep(0.01)
    return mine
mine = ancestry()
# Zombies are dead already (one may be that helper, not yet reaped).
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine and (stat(p) or "Z")[0] != "Z")
"""
ALIVE = OTHER_PIDS + "print('alive', others)\n"


def assert_answers(sb: Sandbox) -> None:
    """A follow-up run is ok and sees no process but its own ancestors (no trace of an earlier run)."""
    r = sb.run(ALIVE, timeout=10)
    assert (r.status, r.stdout) == ("ok", "alive []\n"), r


def harness(sb: Sandbox) -> tuple:
    """What identifies the machinery behind a sandbox: the fork server, or the container."""
    if isinstance(sb, LocalSandbox):
        server = sb._server
        return ("local", server.pid if server else None, sb.server_starts)
    return ("docker", sb.container_id)


def leftovers_in_harness(sb: Sandbox) -> list[str]:
    """Processes in the sandbox's machinery beyond the machinery itself, seen from the host."""
    if isinstance(sb, LocalSandbox):
        server = sb._server
        if server is None or server.pid is None:
            return []
        table = _process_table()
        tree = descendants(server.pid, table)

        # bwrap -> bwrap (pid 1 inside) -> the server (python .../forkserver.py); runs are the server's children.
        def is_bwrap(pid: int) -> bool:
            return table[pid][1].split(" ", 1)[0].endswith("bwrap")

        servers = [pid for pid in tree if not is_bwrap(pid) and is_bwrap(table[pid][0])]
        return [cmd for s in servers for cmd in descendants(s, table).values()]
    import docker

    top = docker.from_env().api.top(sb.container_id)
    return [" ".join(p) for p in top["Processes"]][1:]  # the first is the executor (pid 1)


def assert_harness_survived(sb: Sandbox, before: tuple) -> None:
    """The same fork server / container still serves the sandbox, holds nothing else, and answers."""
    assert harness(sb) == before, "the sandbox's server/container was replaced: the attack killed it"
    deadline = time.monotonic() + KILL_GRACE_S
    while (extra := leftovers_in_harness(sb)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert extra == [], f"processes left in the sandbox: {extra}"
    assert_answers(sb)


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    if request.param == "docker":
        from aligngym.sandboxes import ensure_image

        ensure_image()  # cached: built once per machine
    return request.param


@pytest.fixture(scope="module")
def shared(backend):
    """One sandbox per backend for the attacks that cannot poison it."""
    sandbox = make_sandbox(backend, **LIMITS)
    assert sandbox.run("pass").ok  # warm: its fork server / container is up before the first attack
    yield sandbox
    sandbox.close()


@pytest.fixture
def fresh(backend):
    """A sandbox of its own, for attacks that may poison it or need a clean start."""
    sandbox = make_sandbox(backend, **LIMITS)
    assert sandbox.run("pass").ok
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def host_canaries():
    """Paths a sandbox must never create on the host, and hashes of host files it must never change."""
    tag = uuid.uuid4().hex[:8]
    home = os.path.realpath(os.path.expanduser("~"))
    paths = {
        "etc": f"/etc/aligngym-hostile-canary-{tag}",
        "usr": f"/usr/aligngym-hostile-canary-{tag}",
        "home": os.path.join(home, f"aligngym-hostile-canary-{tag}"),
        "root": f"/aligngym-hostile-canary-{tag}",
    }
    watched = ["/etc/passwd", "/etc/shadow", "/etc/hosts", os.path.join(home, ".bashrc")]

    def digests() -> dict[str, str]:
        out = {}
        for path in watched:
            with contextlib.suppress(OSError), open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
        return out

    before = digests()
    yield paths
    assert [p for p in paths.values() if os.path.lexists(p)] == []
    assert digests() == before


@pytest.fixture(autouse=True)
def _host_untouched(host_canaries):
    """After every attack: no canary path on the host, and this process and its parent still alive."""
    parent = os.getppid()
    yield
    assert [p for p in host_canaries.values() if os.path.lexists(p)] == []
    os.kill(parent, 0)  # raises if the attack reached the test runner


def xfail_on(request, backend: str, which: str, reason: str) -> None:
    """Mark this case (only) as a known defeat of ``which`` backend: strict, so a fix shows up as XPASS."""
    if backend == which:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- process attacks --------------------------------------------------------------------------------
FORK_BOMB = """
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb(fresh):
    """Attack: ``while True: os.fork()``. Expected: timeout (or error), the pids limit holds it, every fork
    is dead within 1 s of the wall limit, the harness survives and answers."""
    before = harness(fresh)
    w = run_watched(fresh, Hostile(FORK_BOMB))
    assert w.result.status in ("timeout", "error"), w.result
    assert w.peak >= 1  # the host did see its processes: the scan works for this backend
    assert_tree_dead(w, wall_limit=TIMEOUT)
    assert_harness_survived(fresh, before)


DAEMON = """
import signal, time
late = sys.argv[1] + ".txt"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the grandchild: its own session, reparented, deaf to TERM and HUP
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        open("started-" + late, "w").close()
        time.sleep(DELAY)  # past the end of its run
        open(late, "w").write("the daemon outlived its run")
        time.sleep(60)
    os._exit(0)
while not os.path.exists("started-" + late):
    time.sleep(0.01)
if PARENT_HANGS:
    time.sleep(1e6)
"""


@pytest.mark.parametrize("parent", ["exits", "hangs"])
def test_double_fork_daemon(shared, parent):
    """Attack: a double-forked setsid daemon that ignores TERM/HUP and writes a file 0.8 s later into the
    host-visible working directory. Expected: ok (parent exits) or timeout (parent hangs); the daemon is dead
    within 1 s of the run's end and its late file never appears."""
    before = harness(shared)
    delay = 0.8 if parent == "exits" else TIMEOUT + 0.6
    body = DAEMON.replace("PARENT_HANGS", str(parent == "hangs")).replace("DELAY", str(delay))
    program = Hostile(body)
    w = run_watched(shared, program)
    assert w.result.status == ("ok" if parent == "exits" else "timeout"), w.result
    assert_tree_dead(w, wall_limit=TIMEOUT if parent == "hangs" else None)
    assert shared.read_file(f"started-{program.marker}.txt") == ""  # the daemon did start
    time.sleep(max(0.0, w.started + delay + 0.7 - time.monotonic()))  # past the moment it would write
    late = f"{program.marker}.txt"
    if isinstance(shared, LocalSandbox):
        assert not os.path.exists(os.path.join(shared.workdir, late))  # the host's own view
    with pytest.raises(FileNotFoundError):
        shared.read_file(late)
    assert_harness_survived(shared, before)


SIGTERM_TRAPPED = """
import signal
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
    signal.signal(sig, signal.SIG_IGN)
os.fork()  # a child that traps the same signals: the whole tree spins
while True:
    pass
"""

SIGALRM_OFF = """
import signal, time
signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.alarm(1)
time.sleep(1e6)
"""

THREAD_SPIN = """
import threading
threading.stack_size(256 << 10)
def spin():
    while True:
        pass
threads = [threading.Thread(target=spin) for _ in range(16)]
for t in threads:
    t.start()
print(len(threads), "threads spinning", flush=True)
"""


@pytest.mark.parametrize(
    "body, minimum",
    [
        pytest.param(SIGTERM_TRAPPED, 2, id="sigterm_trapped_busy_loop"),
        pytest.param(SIGALRM_OFF, 1, id="sigalrm_ignored_sleep"),
        pytest.param("import time; time.sleep(1e6)", 1, id="sleep_1e6"),
        pytest.param(THREAD_SPIN, 1, id="16_threads_cpu_spin"),
    ],
)
def test_runs_past_the_wall_limit(shared, body, minimum):
    """Attacks: trapped SIGTERM + busy loop (parent and child), SIGALRM ignored + sleep, ``sleep(1e6)``, 16
    spinning threads. Expected: timeout, exit_code None, the whole tree dead within 1 s of the wall limit."""
    before = harness(shared)
    w = run_watched(shared, Hostile(body))
    assert (w.result.status, w.result.exit_code) == ("timeout", None), w.result
    assert TIMEOUT - 0.05 <= w.result.duration_s <= TIMEOUT + KILL_GRACE_S
    assert w.peak >= minimum
    assert_tree_dead(w, wall_limit=TIMEOUT)
    assert_harness_survived(shared, before)


# -- output attacks ---------------------------------------------------------------------------------
FLOODS = {
    "stdout_lines": ("while True:\n    print('x' * 100)", "stdout"),
    "stderr_lines": ("while True:\n    print('e' * 100, file=sys.stderr)", "stderr"),
    "no_newline": ("while True:\n    sys.stdout.write('y' * 4096)", "stdout"),
    "binary_nul": ("while True:\n    sys.stdout.buffer.write(b'\\0\\xff' * 4096)", "stdout"),
}


@pytest.mark.parametrize("kind", [*FLOODS, "bash_yes"])
def test_output_flood(shared, kind):
    """Attack: endless output (lines on stdout or stderr, one endless line, NUL/0xff bytes, bash ``yes``).
    Expected: output_limit, truncated, exit_code None, the stream bounded by the cap and killed early."""
    before = harness(shared)
    if kind == "bash_yes":
        program, stream = Hostile(""), "stdout"
        w = run_watched(shared, program, language="bash", code=f"exec -a {program.marker} yes")
    else:
        body, stream = FLOODS[kind]
        w = run_watched(shared, Hostile(body))
    r = w.result
    assert (r.status, r.truncated, r.exit_code) == ("output_limit", True, None), (r.status, r.stderr[-500:])
    text = getattr(r, stream)
    assert CAP // 2 <= len(text) <= CAP  # characters: never more than the bytes kept
    if kind == "binary_nul":
        assert set(text) <= {"\0", "\ufffd"}
    assert r.duration_s < TIMEOUT  # killed for the flood, not by the clock
    assert_tree_dead(w)
    assert_harness_survived(shared, before)


# -- memory and disk --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("b = bytearray(2 << 30)", id="2GiB_at_once"),
        pytest.param(
            "import time\nheap = []\nwhile True:\n    heap.append(b'x' * (10 << 20))\n    time.sleep(0.01)",
            id="10MiB_chunks",
        ),
    ],
)
def test_memory_hog(fresh, body):
    """Attack: a 2 GiB allocation, or growth by 10 MiB chunks with short sleeps, against a 256 MiB limit.
    Expected: status memory (OOM kill or MemoryError), the host and the harness unaffected."""
    before = harness(fresh)
    w = run_watched(fresh, Hostile(body))
    assert w.result.status == "memory", w.result
    assert w.result.duration_s < TIMEOUT
    assert_tree_dead(w)
    assert_harness_survived(fresh, before)


SPLIT_HOG = """
import time
kids = []
for _ in range(8):
    pid = os.fork()
    if pid == 0:
        try:
            block = bytearray(200 << 20)  # zero-filled, so every page is touched
        except MemoryError:
            os._exit(3)
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1]) for kid in kids]
print(codes)
sys.exit(0 if codes == [0] * len(kids) else 1)
"""

PER_PROCESS_MEMORY = (
    "without a delegated cgroup v2 (this host: cgroup v1, `limits_enforced['memory'] == 'rlimit_as'`) the "
    "local backend's memory limit is RLIMIT_AS, which is per process: 8 forked children of one run each hold "
    "200 MiB (about 1.6 GiB of host RAM under memory_mb=256; with pids=64, up to 64 x memory_mb). Fix: hold "
    "the whole run (or sandbox) in one memory accounting unit: a cgroup (v2 delegation, or v1 memory "
    "controller), or refuse memory limits it cannot enforce (SandboxError / loud warning) instead of "
    "silently degrading to a per-process cap"
)


def test_memory_split_across_processes(fresh, backend, request):
    """Attack: 8 forked children each allocate (and touch) 200 MiB, under a 256 MiB limit, so no single
    process crosses it. Expected: the sandbox as a whole is held to its limit: children are killed (status
    memory) and the run's processes never hold more than about 2x memory_mb of host RAM."""
    if "cgroup" not in getattr(fresh, "limits_enforced", {}).get("memory", "cgroup"):
        xfail_on(request, backend, "local", PER_PROCESS_MEMORY)  # with a cgroup v2 the sandbox is held whole
    w = run_watched(fresh, Hostile(SPLIT_HOG), timeout=5)
    assert_tree_dead(w)
    assert w.peak_rss_mb <= 2 * LIMITS["memory_mb"], f"the run held {w.peak_rss_mb} MiB of host RAM"
    assert w.result.status == "memory", w.result


BIG_FILE = """
path = PATH
with open(path, "wb") as f:
    if SPARSE:
        f.seek(1 << 30)
        f.write(b"x")
    else:
        chunk = b"\\0" * (1 << 20)
        for _ in range(1024):
            f.write(chunk)
"""


@pytest.mark.parametrize(
    "path, sparse",
    [("big.bin", False), ("/tmp/big.bin", False), ("sparse.bin", True)],
    ids=["workdir", "tmp", "sparse_seek"],
)
def test_one_gib_file(shared, path, sparse):
    """Attack: write a 1 GiB file (in the working directory, in /tmp, or as a sparse seek past 1 GiB).
    Expected: error (EFBIG from the file-size limit); the file is absent or at most max_file_mb; the host's
    disk does not fill."""
    free_before = shutil.disk_usage("/tmp").free
    program = Hostile(BIG_FILE.replace("PATH", repr(path)).replace("SPARSE", str(sparse)))
    w = run_watched(shared, program)
    assert w.result.status == "error", w.result
    assert "File too large" in w.result.stderr, w.result.stderr[-500:]
    assert_tree_dead(w)
    size = shared.run(f"import os; print(os.stat({path!r}).st_size if os.path.exists({path!r}) else -1)")
    assert int(size.stdout) <= FILE_MB << 20
    if isinstance(shared, LocalSandbox) and not path.startswith("/"):
        host_path = os.path.join(shared.workdir, path)
        assert not os.path.exists(host_path) or os.path.getsize(host_path) <= FILE_MB << 20
    assert free_before - shutil.disk_usage("/tmp").free < (FILE_MB + 64) << 20
    shared.run(f"import os\nif os.path.exists({path!r}): os.remove({path!r})")


FILL = """
chunk = b"\\0" * (1 << 20)
written = 0
try:
    for i in range(32):  # 32 files of 16 MiB, each within max_file_mb: 512 MiB in all
        with open(f"fill-{i}.bin", "wb") as f:
            for _ in range(16):
                f.write(chunk)
                written += 1
except OSError as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
print(written, "MiB written")
"""

UNBOUNDED_WORKDIR = (
    "the local backend's working directory is a plain directory on the host disk (tempfile.gettempdir()) "
    "with no size bound: RLIMIT_FSIZE caps each file, not their number, so one run writes 512 MiB of "
    "16 MiB files (about 300 MiB/s here: a 10 s default timeout fills ~3 GB, and files persist across runs). "
    "docker bounds /sandbox with a memory_mb tmpfs. Fix: mount a size-limited tmpfs (bwrap --size --tmpfs) "
    "or a quota'd filesystem as the working directory, and copy files in/out through it"
)


def test_many_files_under_the_size_limit(fresh, backend, request):
    """Attack: fill the disk with many files, each within max_file_mb (32 x 16 MiB = 512 MiB). Expected: the
    working directory is bounded (docker: a memory_mb tmpfs), so writing stops with ENOSPC by ~memory_mb and
    the host's disk does not fill."""
    if getattr(fresh, "limits_enforced", {}).get("workdir_size", "tmpfs") != "tmpfs":
        xfail_on(request, backend, "local", UNBOUNDED_WORKDIR)  # bounded by a tmpfs where it can mount one
    free_before = shutil.disk_usage("/tmp").free
    w = run_watched(fresh, Hostile(FILL), timeout=5)
    assert_tree_dead(w)
    assert w.result.status in ("ok", "error", "memory"), w.result  # docker's tmpfs counts as memory too
    left = fresh.run("import os; print(sum(os.path.getsize(f) for f in os.listdir('.')) >> 20)")
    assert left.ok, left
    assert int(left.stdout) <= LIMITS["memory_mb"] + FILE_MB, f"one run left {left.stdout.strip()} MiB"
    assert free_before - shutil.disk_usage("/tmp").free < (LIMITS["memory_mb"] + 64) << 20
    assert_answers(fresh)


# -- filesystem, secrets and network ------------------------------------------------------------------
WRITE_OUTSIDE = """
import json
outcome = {}
for name, path in TARGETS.items():
    try:
        with open(path, "w") as f:
            f.write("pwned")
        outcome[name] = "written"
    except OSError as exc:
        outcome[name] = type(exc).__name__
with open(os.path.join(os.environ["HOME"], "home-probe.txt"), "w") as f:
    f.write("in the sandbox's own home")
print(json.dumps(outcome))
"""


def test_writes_outside_the_workdir_fail(shared, host_canaries):
    """Attack: write canary files into /etc, /usr, /, and the host user's home (e.g. /root). Expected: each
    write fails (read-only or permission denied) and no canary exists on the host. The sandbox's own $HOME is
    its working directory: writable, and never the host's home."""
    w = run_watched(shared, Hostile(WRITE_OUTSIDE.replace("TARGETS", repr(host_canaries))))
    assert w.result.ok, w.result
    outcome = json.loads(w.result.stdout)
    assert set(outcome) == set(host_canaries)
    assert "written" not in outcome.values(), outcome
    assert shared.read_file("home-probe.txt") == "in the sandbox's own home"
    home = os.path.realpath(os.path.expanduser("~"))
    assert not os.path.exists(os.path.join(home, "home-probe.txt"))
    assert_tree_dead(w)


SECRETS = """
import glob, json
SECRET = REVERSED[::-1]  # never spelled out in this program's own command line
found = {"env": os.environ.get("ALIGNGYM_SECRET"), "files": {}, "proc": []}
for path in PATHS:
    for candidate in (path, "/proc/1/root" + path):
        try:
            with open(candidate) as f:
                found["files"][candidate] = f.read()
        except OSError as exc:
            found["files"][candidate] = type(exc).__name__
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        with open(path, "rb") as f:
            if SECRET.encode() in f.read():
                found["proc"].append(path)
    except OSError:
        pass
print(json.dumps(found))
"""


def test_host_secrets_unreadable(backend, monkeypatch, tmp_path_factory):
    """Attack: read a host env var (set before the sandbox exists) and mode-600 host files in the host home
    and /tmp, directly, via /proc/1/root, and by grepping /proc/*/environ. Expected: none of it is visible."""
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("ALIGNGYM_SECRET", secret)
    home = os.path.realpath(os.path.expanduser("~"))
    paths = [
        os.path.join(home, f".aligngym_secret_{uuid.uuid4().hex}"),
        f"/tmp/aligngym_secret_{uuid.uuid4().hex}",
    ]
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
    try:
        with make_sandbox(backend, **LIMITS) as sb:
            body = SECRETS.replace("PATHS", repr(paths)).replace("REVERSED", repr(secret[::-1]))
            w = run_watched(sb, Hostile(body))
            assert w.result.ok, w.result
            assert secret not in w.result.stdout + w.result.stderr
            found = json.loads(w.result.stdout)
            assert found["env"] is None and found["proc"] == []
            assert all(v in ("FileNotFoundError", "PermissionError") for v in found["files"].values()), found
            probe = sb.run("cat /proc/1/environ 2>/dev/null; env", language="bash")
            assert secret not in probe.stdout
            assert_tree_dead(w)
    finally:
        for path in paths:
            os.unlink(path)


def _host_ipv4_addresses() -> list[str]:
    addresses = {"127.0.0.1"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=5).stdout
        addresses.update(line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3)
    return sorted(addresses)


CONNECT = """
import json, socket
outcome = {}
for host in HOSTS:
    try:
        socket.create_connection((host, PORT), timeout=1).close()
        outcome[host] = "connected"
    except OSError as exc:
        outcome[host] = type(exc).__name__
print(json.dumps(outcome))
"""


def test_host_tcp_server_unreachable(shared):
    """Attack: connect to a TCP server the test runs on the host (127.0.0.1 and every other host address,
    e.g. the docker bridge gateway). Expected: every connect fails and the server accepts nothing."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.5)
    hosts = _host_ipv4_addresses()
    try:
        body = CONNECT.replace("HOSTS", repr(hosts)).replace("PORT", str(server.getsockname()[1]))
        w = run_watched(shared, Hostile(body))
        assert w.result.ok, w.result
        outcome = json.loads(w.result.stdout)
        assert set(outcome) == set(hosts) and "connected" not in outcome.values(), outcome
        try:
            conn, peer = server.accept()
            conn.close()
        except TimeoutError:
            peer = None
        assert peer is None, f"the host server accepted a connection from {peer}"
        assert_tree_dead(w)
    finally:
        server.close()


KILL_EVERYONE = """
import json, signal
outcome = {}
for name, target in [("parent", os.getppid()), ("pid1", 1), ("host_test", HOST_PID), ("host_parent", HOST_PPID),
                     ("everyone", -1)]:
    try:
        os.kill(target, signal.SIGKILL)
        outcome[name] = "sent"
    except OSError as exc:
        outcome[name] = type(exc).__name__
print(json.dumps(outcome), flush=True)
"""


def test_kill_parent_and_everyone(fresh):
    """Attack: SIGKILL its parent, pid 1, the host test process's pid and ``kill(-1, 9)``. Expected: the
    program may exit either way, but the test process, its runner, the sandbox's server/container and later
    runs are unaffected."""
    before = harness(fresh)
    body = KILL_EVERYONE.replace("HOST_PID", str(os.getpid())).replace("HOST_PPID", str(os.getppid()))
    w = run_watched(fresh, Hostile(body))
    assert w.result.status in ("ok", "error"), w.result
    assert_tree_dead(w)
    os.kill(os.getpid(), 0)
    os.kill(os.getppid(), 0)
    assert_harness_survived(fresh, before)


def test_blocking_stdin_read(shared):
    """Attack: ``sys.stdin.read()`` with no stdin given. Expected: EOF at once (ok, empty), never a hang."""
    w = run_watched(shared, Hostile("print(repr(sys.stdin.read()))"))
    assert (w.result.status, w.result.stdout) == ("ok", "''\n"), w.result
    assert w.returned - w.started < TIMEOUT
    assert_tree_dead(w)


def test_fd_exhaustion(shared):
    """Attack: open files until EMFILE. Expected: error (Too many open files); later runs are fine."""
    before = harness(shared)
    body = "fds = []\nwhile True:\n    fds.append(os.open('/dev/null', os.O_RDONLY))"
    w = run_watched(shared, Hostile(body))
    assert w.result.status == "error" and "Too many open files" in w.result.stderr, w.result
    assert_tree_dead(w)
    assert_harness_survived(shared, before)


# -- privilege attacks ------------------------------------------------------------------------------
def _host_mounts() -> list[str]:
    """The host's mounts at or under /mnt (other mounts come and go with other tests' containers)."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4] == "/mnt" or line.split()[4].startswith("/mnt/")]


def test_mount_fails(shared):
    """Attack: ``mount -t tmpfs x /mnt`` and the raw mount(2) syscall. Expected: both fail; the host's mount
    table is unchanged."""
    before = _host_mounts()
    body = """
    import ctypes, subprocess
    r = subprocess.run(["mount", "-t", "tmpfs", "x", "/mnt"], capture_output=True)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"x", b"/mnt", b"tmpfs", 0, None)
    print(r.returncode, rc, ctypes.get_errno())
    """
    w = run_watched(shared, Hostile(body))
    assert w.result.ok, w.result
    mount_rc, syscall_rc, errno = map(int, w.result.stdout.split())
    assert mount_rc != 0 and syscall_rc == -1 and errno != 0
    assert _host_mounts() == before
    assert_tree_dead(w)


UNSHARE = """
import ctypes, subprocess
r = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs x /mnt && touch /mnt/CANARY"],
                   capture_output=True)
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.unshare(0x10000000)  # CLONE_NEWUSER
print(r.returncode, rc, flush=True)
"""


def test_unshare_is_refused(shared, backend, request):
    """Attack: ``unshare -r -m`` (a nested user + mount namespace) and the raw unshare(CLONE_NEWUSER).
    Expected: both fail (EPERM)."""
    w = run_watched(shared, Hostile(UNSHARE.replace("CANARY", uuid.uuid4().hex)))
    assert w.result.ok, w.result
    tool_rc, syscall_rc = map(int, w.result.stdout.split())
    assert_tree_dead(w)
    assert (tool_rc != 0, syscall_rc) == (True, -1), "creating a user namespace succeeded in the sandbox"


def test_unshare_cannot_touch_the_host(shared):
    """Attack: in a nested user + mount namespace (where allowed), mount a tmpfs on /mnt and write into it.
    Expected: whatever the namespace allows, the host's mount table and /mnt are unchanged."""
    canary = f"aligngym-unshare-{uuid.uuid4().hex[:8]}"
    before, mnt_before = _host_mounts(), sorted(os.listdir("/mnt")) if os.path.isdir("/mnt") else None
    w = run_watched(shared, Hostile(UNSHARE.replace("CANARY", canary)))
    assert w.result.ok, w.result
    assert_tree_dead(w)
    assert _host_mounts() == before
    assert (sorted(os.listdir("/mnt")) if os.path.isdir("/mnt") else None) == mnt_before
    assert not os.path.exists(f"/mnt/{canary}")


def test_ptrace_fails(shared):
    """Attack: PTRACE_ATTACH to pid 1 (the run's init / the container's executor) and to its parent, and
    opening /proc/1/mem. Expected: all fail."""
    body = """
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    outcome = {}
    for target in sorted({1, os.getppid()}):
        rc = libc.ptrace(16, target, None, None)  # PTRACE_ATTACH
        outcome[str(target)] = [rc, ctypes.get_errno()]
    try:
        open("/proc/1/mem", "rb").close()
        outcome["mem"] = "opened"
    except OSError as exc:
        outcome["mem"] = type(exc).__name__
    print(json.dumps(outcome))
    """
    w = run_watched(shared, Hostile(body))
    assert w.result.ok, w.result
    outcome = json.loads(w.result.stdout)
    assert outcome.pop("mem") != "opened"
    assert all(rc == -1 and errno != 0 for rc, errno in outcome.values()), outcome
    assert_tree_dead(w)


# -- state left behind ------------------------------------------------------------------------------
LEAVE_BEHIND = """
import subprocess
open("leftover.txt", "w").write("from the previous user")
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)", sys.argv[1]],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
LOOK_AROUND = OTHER_PIDS + "print(sorted(os.listdir('.')), others)\n"


def test_nothing_left_for_the_next_sandbox(backend):
    """Attack: sandbox A leaves a file and a detached background sleeper, then A is closed. Expected: the
    sleeper is dead (host view), A's working directory is gone, and a new sandbox B sees no file and no
    process."""
    a = make_sandbox(backend, **LIMITS)
    program = Hostile(LEAVE_BEHIND)
    try:
        w = run_watched(a, program)
        assert w.result.ok, w.result
        assert a.read_file("leftover.txt") == "from the previous user"
        root = os.path.dirname(a.workdir) if isinstance(a, LocalSandbox) else None
    finally:
        a.close()
    assert_tree_dead(w)
    if root is not None:
        assert not os.path.exists(root)
    with make_sandbox(backend, **LIMITS) as b:
        assert b.run(LOOK_AROUND).stdout == "[] []\n"
    assert program.pids() == []


def test_nothing_left_for_the_next_pool_user(backend):
    """Attack: a pooled sandbox's user leaves a file and a detached sleeper, then releases it. Expected: the
    next acquire (the same warm sandbox where the backend can reset, else a fresh one) is clean."""
    with SandboxPool(backend, size=1, **LIMITS) as pool:
        first = pool.acquire()
        program = Hostile(LEAVE_BEHIND)
        w = run_watched(first, program)
        assert w.result.ok, w.result
        pool.release(first)
        assert_tree_dead(w)
        second = pool.acquire()
        try:
            assert second.run(LOOK_AROUND).stdout == "[] []\n"
            if isinstance(first, LocalSandbox):  # docker containers are never reused (reset refuses)
                assert second is first and pool.stats().reused == 1
        finally:
            pool.release(second)
    assert program.pids() == []


PLANT_LINKS = """
os.symlink("/etc/shadow", "shadow_link")
os.symlink("/etc", "etc_dir")
os.symlink("../../../../../etc/passwd", "dotdot_link")
"""


def test_path_escapes_refused(shared):
    """Attack: write_files/read_file with ``../x``, absolute paths, and symlinks to /etc/shadow, /etc and a
    ``..`` chain planted by sandboxed code. Expected: SandboxError every time; host files unchanged."""
    tag = uuid.uuid4().hex[:8]
    for bad in ["../x", "a/../../x", "/etc/passwd", f"/tmp/aligngym-escape-{tag}", "./.."]:
        with pytest.raises(SandboxError):
            shared.write_files({bad: "pwned"})
        with pytest.raises(SandboxError):
            shared.read_file(bad)
    assert not os.path.exists(f"/tmp/aligngym-escape-{tag}")
    w = run_watched(shared, Hostile(PLANT_LINKS))
    assert w.result.ok, w.result
    for planted in ["shadow_link", "dotdot_link", "etc_dir/passwd"]:
        with pytest.raises(SandboxError):
            shared.read_file(planted)
    for planted in ["shadow_link", "dotdot_link", f"etc_dir/aligngym-escape-{tag}"]:
        with pytest.raises(SandboxError):
            shared.write_files({planted: "pwned"})
    assert not os.path.exists(f"/etc/aligngym-escape-{tag}")
    shared.run("import os\nfor p in ('shadow_link', 'etc_dir', 'dotdot_link'): os.unlink(p)")


RACE = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("d", exist_ok=True)
with open("d/secret.txt", "w") as f:
    f.write("inside")
os.symlink(TARGET, "link")
if libc.renameat2(-100, b"d", -100, b"link", 2) != 0:
    print("renameat2 unsupported", ctypes.get_errno())
    sys.exit(3)
open("flipping", "w").close()
end = time.time() + 6.0
while time.time() < end and not os.path.exists("stop"):
    for _ in range(500):  # swap the directory d and the symlink link atomically, over and over
        libc.renameat2(-100, b"d", -100, b"link", 2)  # AT_FDCWD, RENAME_EXCHANGE
"""


def test_symlink_swap_race_during_file_transfer(shared, tmp_path_factory):
    """Attack: while the host calls write_files/read_file on ``d/...``, a concurrent run keeps swapping the
    directory ``d`` with a symlink to a host directory. Expected: every transfer stays inside the working
    directory (or fails with SandboxError); nothing is written to, or read from, the host directory.
    (Before 8d47273 the local backend lost this race within milliseconds: a realpath check, then an open by
    name, as root.)"""
    target = tmp_path_factory.mktemp("race-target")
    os.chmod(target, 0o755)
    secret = f"host-secret-{uuid.uuid4().hex}"
    (target / "secret.txt").write_text(secret)
    program = Hostile(RACE.replace("TARGET", repr(str(target))))
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        running = worker.submit(shared.run, program.code, timeout=8)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not running.done():
            with contextlib.suppress(FileNotFoundError, SandboxError):
                shared.read_file("flipping")
                break
            time.sleep(0.01)
        leaked, attempts, deadline = [], 0, time.monotonic() + 2.5  # a racy walk loses in milliseconds
        while time.monotonic() < deadline and not running.done():  # until the first escape, if any
            attempts += 1
            with contextlib.suppress(SandboxError, OSError):
                shared.write_files({"d/pwned.txt": "written through the race"})
            with contextlib.suppress(SandboxError, OSError):
                if shared.read_file("d/secret.txt") == secret:
                    leaked.append(attempts)
            if leaked or (target / "pwned.txt").exists():
                break
        shared.write_files({"stop": ""})
        result = running.result()
    if "renameat2 unsupported" in result.stdout:
        pytest.skip(f"this kernel or filesystem cannot swap a directory and a symlink: {result.stdout}")
    assert result.status in ("ok", "timeout"), result
    assert attempts > 0
    shared.run(
        "import os, shutil\nshutil.rmtree('d', True)\nfor p in ('link', 'flipping', 'stop'): os.unlink(p)"
    )
    assert sorted(p.name for p in target.iterdir()) == ["secret.txt"], "the host wrote outside the workdir"
    assert leaked == [], f"the host read a file outside the workdir (attempt {leaked[0]} of {attempts})"


IN_FLIGHT_DAEMON = """
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a double-forked helper daemon of this run (a local server, say)
        while True:
            open("heartbeat", "w").write(str(time.time()))
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.3)
open("daemon-up", "w").close()
time.sleep(1.2)  # meanwhile another run in this sandbox starts and ends
with open("heartbeat") as f:
    age = time.time() - float(f.read() or 0)
print("daemon alive" if age < 0.5 else f"daemon dead for {age:.2f}s")
"""


def test_daemon_of_an_in_flight_run_survives_other_runs_ending(shared, backend, request):
    """Concurrency: run A double-forks a helper daemon and keeps running; meanwhile run B starts and ends
    in the same sandbox. Expected: A's daemon lives until A ends (then dies with it), unharmed by B's end."""
    program = Hostile(IN_FLIGHT_DAEMON)

    async def both():
        a = asyncio.ensure_future(shared.arun(program.code, timeout=5))
        for _ in range(300):  # until A's daemon is up
            await asyncio.sleep(0.01)
            with contextlib.suppress(FileNotFoundError, SandboxError):
                shared.read_file("daemon-up")
                break
        b = await shared.arun("print('b done')")
        return await a, b

    a, b = asyncio.run(both())
    assert b.stdout == "b done\n", b
    assert a.ok, a
    deadline = time.monotonic() + KILL_GRACE_S
    while program.pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert program.pids() == []  # A ended: its daemon went with it
    shared.run("import os\nfor p in ('heartbeat', 'daemon-up'): os.unlink(p)")
    assert a.stdout == "daemon alive\n", a.stdout


def test_concurrent_attacks_on_one_sandbox(shared):
    """Attack: a sleeper, an output flood, fd exhaustion and a run with a child process at once in one
    sandbox, next to an honest run. Expected: each gets its own status (timeout, output_limit, error, ok), the
    honest run is ok, and nothing survives. (Memory, pids and, in docker, uid-wide signals are shared by one
    sandbox's runs, so no hog, bomb or ``kill(-1)`` here; daemons: the next test.)"""
    attacks = [
        Hostile("import time; time.sleep(1e6)"),
        Hostile(FLOODS["stdout_lines"][0]),
        Hostile("fds = []\nwhile True:\n    fds.append(os.open('/dev/null', os.O_RDONLY))"),
        Hostile("import subprocess\nsubprocess.run(['sh', '-c', 'sleep 0.3 & wait'])\nprint('child done')"),
    ]

    async def attack():
        return await asyncio.gather(
            *(shared.arun(p.code) for p in attacks), shared.arun("print(sum(range(10)))")
        )

    before = harness(shared)
    results = asyncio.run(attack())
    assert [r.status for r in results] == ["timeout", "output_limit", "error", "ok", "ok"], results
    assert results[-1].stdout == "45\n"
    deadline = time.monotonic() + KILL_GRACE_S
    while any(p.pids() for p in attacks) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p.pids() for p in attacks] == [[]] * len(attacks)
    assert_harness_survived(shared, before)
