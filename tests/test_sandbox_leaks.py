"""Leak tests: many mixed runs (a tenth of them hostile) through sandbox pools, and a sandbox owner killed
with SIGKILL mid-run. Afterwards nothing may be left: no aligngym containers, no sandbox processes and no
sandbox temp directories.

Every hostile program re-execs itself with the test's marker in its argv, so the host finds its processes
(container processes included) in ``/proc/*/cmdline``. Each test points the sandboxes' temp directories at
a private directory (``tempfile.tempdir`` in this process, ``TMPDIR`` in a child), so "no temp directory
left" is exact even while other tests create sandboxes next to it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
from _helpers import docker_up

from aligngym.sandboxes import SandboxConfig, bwrap_available
from aligngym.sandboxes.pool import SandboxPool

pytestmark = pytest.mark.slow


LOCAL = pytest.param(
    "local",
    id="local",
    marks=pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable here"),
)
DOCKER = pytest.param(
    "docker",
    id="docker",
    marks=[
        pytest.mark.docker,
        pytest.mark.skipif(not docker_up(), reason="`docker info` fails; start one: .ci/dockerd.sh"),
    ],
)

CONCURRENCY = 4
HOSTILE_TIMEOUT = 0.5
# Honest runs (print) get a limit no load can reach (a 5 s one timed out under -n auto); hostile ones 0.5 s.
CONFIG = SandboxConfig(timeout=120, memory_mb=256, pids=64, max_output_bytes=64 << 10, max_file_mb=16)


# -- helpers ----------------------------------------------------------------------------------------
def marked(body: str, marker: str) -> str:
    """``body`` as a program whose every process carries ``marker`` in its command line."""
    body = "import os, sys\n" + textwrap.dedent(body)
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {body!r}, {marker!r}])\n"


def marker_pids(marker: str) -> list[int]:
    needle, found = marker.encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, start time) of a live process, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else (int(fields[1]), fields[19].decode())


def sandbox_processes(root: int) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of the bwrap / fork-server / python descendants of ``root``."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    info = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            children[stat[0]].append(int(name))
            info[int(name)] = stat[1]
    found, todo = {}, list(children[root])
    while todo:
        pid = todo.pop()
        todo += children[pid]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(word in cmdline for word in ("bwrap", "forkserver", "unshare", "python", "sleep")):
            found[pid] = (info[pid], cmdline[:200])
    return found


def still_alive(processes: dict[int, tuple[str, str]]) -> dict[int, str]:
    """Those of ``processes`` alive now (same pid and the same start time: no pid reuse)."""
    return {pid: cmd for pid, (start, cmd) in processes.items() if (s := _stat(pid)) and s[1] == start}


def wait_until(condition, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held, None if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(step)
    return None


def leftover_dirs(tmpdir: str) -> list[str]:
    return sorted(os.listdir(tmpdir))


def _docker_client():
    import docker

    return docker.from_env(timeout=60)


def containers_of(client, owner_pid: int) -> list[str]:
    return [
        c["Id"] for c in client.api.containers(all=True, filters={"label": f"aligngym.owner_pid={owner_pid}"})
    ]


# -- the workload -------------------------------------------------------------------------------------
def hostile_programs(marker: str) -> list[tuple[str, str, float | None, set[str]]]:
    """(kind, code, timeout, statuses it may end with) of each hostile kind.

    Only those that never end run under ``HOSTILE_TIMEOUT``; the flood and the daemon end by themselves and
    get the config's (load-proof) limit: under ``-n auto`` 0.5 s was too short for them to start.
    """
    return [
        ("sleep", marked("import time; time.sleep(1e6)", marker), HOSTILE_TIMEOUT, {"timeout"}),
        (
            "fork_bomb",
            marked("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass", marker),
            HOSTILE_TIMEOUT,
            {"timeout", "error"},
        ),
        ("flood", marked("while True:\n    print('x' * 200)", marker), None, {"output_limit"}),
        (
            "daemon",
            marked(
                """
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        import signal, time
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                        time.sleep(60)
                    os._exit(0)
                print("parent done")
                """,
                marker,
            ),
            None,
            {"ok"},
        ),
    ]


def workload(n: int, marker: str) -> list[tuple[int, str, str, float | None, set[str], str | None]]:
    """``n`` runs, every tenth hostile: (index, kind, code, timeout, allowed statuses, expected stdout)."""
    hostile, runs = hostile_programs(marker), []
    for i in range(n):
        if i % 10 == 0:
            kind, code, timeout, statuses = hostile[(i // 10) % len(hostile)]
            runs.append((i, kind, code, timeout, statuses, None))
        else:
            runs.append((i, "honest", f"print({i} * {i})", None, {"ok"}, f"{i * i}\n"))
    return runs


def run_batches(pool: SandboxPool, runs: list, batch: int) -> list[tuple]:
    """Run ``runs`` through ``pool`` from ``CONCURRENCY`` threads, ``batch`` runs per acquired sandbox."""

    def one_batch(chunk):
        out = []
        with pool.sandbox() as sb:
            for i, kind, code, timeout, statuses, stdout in chunk:
                r = sb.run(code, timeout=timeout)
                out.append((i, kind, r, statuses, stdout))
        return out

    chunks = [runs[k : k + batch] for k in range(0, len(runs), batch)]
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as workers:
        return [item for part in workers.map(one_batch, chunks) for item in part]


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """Sandboxes created by this process during the test put their temp directories here."""
    path = tmp_path / "sandbox-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return str(path)


@pytest.fixture
def private_docker_pool(monkeypatch):
    """``make_sandbox("docker")`` (so SandboxPool too) on a DockerPool of this test's own, shut down at the
    end; yields the pool and the ids of every container it ever started."""
    from aligngym.sandboxes import BACKENDS, DockerPool, DockerSandbox

    pool = DockerPool(size=2, max_live=CONCURRENCY + 4)
    started: list[str] = []
    create = pool._create

    def recording_create(client, spec, slot):
        container = create(client, spec, slot)
        started.append(container.id)
        return container

    pool._create = recording_create
    monkeypatch.setitem(
        BACKENDS, "docker", lambda config, slot=None: DockerSandbox(config, slot=slot, pool=pool)
    )
    yield pool, started
    pool.shutdown()


# -- 1,000 mixed runs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend, n_runs, batch",
    [
        pytest.param(*LOCAL.values, 800, 5, marks=LOCAL.marks, id="local-800"),
        pytest.param(*DOCKER.values, 200, 10, marks=DOCKER.marks, id="docker-200"),
    ],
)
def test_mixed_runs_leave_nothing(backend, n_runs, batch, private_tmpdir, request):
    """Load: 800 local + 200 docker runs (a tenth hostile: sleepers past their timeout, fork bombs, output
    floods, double-forked daemons) through a SandboxPool at concurrency 4. Expected: every run ends with its
    status, and after the pool closes there are no marked processes, no sandbox processes beyond those that
    were there before, no sandbox temp directories and (docker) none of its containers, after reap_orphans."""
    marker = f"aligngym-leak-{uuid.uuid4().hex[:12]}"
    before = sandbox_processes(os.getpid())
    started: list[str] = []
    if backend == "docker":
        pool_fixture = request.getfixturevalue("private_docker_pool")
        started = pool_fixture[1]
    runs = workload(n_runs, marker)

    t0 = time.monotonic()
    with SandboxPool(backend, size=CONCURRENCY, config=CONFIG) as pool:
        results = run_batches(pool, runs, batch)
        stats = pool.stats()
    if backend == "docker":
        pool_fixture[0].shutdown()
    wall = time.monotonic() - t0

    assert len(results) == n_runs
    bad = [
        (i, kind, r.status, r.stderr[-200:])
        for i, kind, r, statuses, _ in results
        if r.status not in statuses
    ]
    assert bad == [], bad[:10]
    wrong = [(i, r.stdout) for i, _, r, _, stdout in results if stdout is not None and r.stdout != stdout]
    assert wrong == [], wrong[:10]
    by_kind = collections.Counter((kind, r.status) for _, kind, r, _, _ in results)
    print(
        f"\n{backend}: {n_runs} runs in {wall:.1f}s = {n_runs / wall:.1f} runs/s at concurrency {CONCURRENCY}; "
        f"{dict(by_kind)}; pool {stats}"
    )

    # Nothing left: marked processes, sandbox processes, temp dirs, containers.
    assert wait_until(lambda: not marker_pids(marker), 5) is not None, marker_pids(marker)
    new = {pid: v for pid, v in sandbox_processes(os.getpid()).items() if pid not in before}
    assert wait_until(lambda: not still_alive(new), 5) is not None, still_alive(new)
    assert leftover_dirs(private_tmpdir) == []
    if backend == "docker":
        from aligngym.sandboxes import reap_orphans

        client = _docker_client()
        reap_orphans(client)  # what the next start in any process would do
        assert len(started) >= CONCURRENCY  # containers are reset between batches, not replaced
        ids = set(started)

        def gone() -> bool:
            return not ids & {
                c["Id"] for c in client.api.containers(all=True, filters={"label": "aligngym=1"})
            }

        assert wait_until(gone, 20) is not None, "containers of this test are left"


# -- an owner killed with SIGKILL mid-run ------------------------------------------------------------
OWNER = """
import json, sys, threading, time
from aligngym.sandboxes import make_sandbox
from aligngym.sandboxes.pool import get_pool

backend, sleeper = sys.argv[1], sys.argv[2]
direct = make_sandbox(backend, timeout=600)
pooled = get_pool(backend, timeout=600).acquire()
for sandbox in (direct, pooled):
    threading.Thread(target=sandbox.run, args=(sleeper,), daemon=True).start()
info = {
    "workdirs": [getattr(s, "workdir", None) for s in (direct, pooled)],
    "containers": [getattr(s, "container_id", None) for s in (direct, pooled)],
}
print(json.dumps(info), flush=True)
time.sleep(600)
"""


class TempDirsLeft(AssertionError):
    """The killed owner's sandbox temp directories are still on disk."""


def _cgroup_bases() -> list[str]:
    from aligngym.sandboxes import limits

    parent = limits.cgroup_parent()
    if parent is None:
        return []
    return list(parent.values()) if isinstance(parent, dict) else [parent]


def _cgroups_named(bases: list[str], prefix: str) -> list[str]:
    return [name for base in bases for name in os.listdir(base) if name.startswith(prefix)]


@pytest.mark.parametrize("backend", [LOCAL, DOCKER])
def test_sigkilled_owner_leaves_nothing(backend, tmp_path, request):
    """Attack on the harness: a child process creates a sandbox directly and one from a pool, starts a
    sleeper in each, and is killed with SIGKILL mid-run. Expected: every sandbox process (bwrap, fork server,
    sleepers, container processes) is gone within seconds, no container of the dead owner survives
    reap_orphans, and no sandbox temp directory is left."""
    private = tmp_path / "owner-tmp"
    private.mkdir()
    marker = f"aligngym-leak-owner-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "TMPDIR": str(private), "ALIGNGYM_DOCKER_POOL": "1"}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, backend, marked("import time; time.sleep(600)", marker)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 90)
        info = json.loads(owner.stdout.readline() or "null") if ready else None
        assert info, "the owner process failed to start its sandboxes"
        assert wait_until(lambda: len(marker_pids(marker)) >= 2, 30) is not None, "the sleepers never started"
        # Its bwrap / fork-server trees (local); container processes are the daemon's children, found by marker.
        tree = sandbox_processes(owner.pid)
        if backend == "local":
            assert any("bwrap" in cmd for _, cmd in tree.values()), tree
        client = _docker_client() if backend == "docker" else None
        if client is not None:
            assert set(info["containers"]) <= set(containers_of(client, owner.pid))
        # Checked while the owner lives: once it is dead, any xdist worker's first sandbox may reap them.
        cgroup_bases = _cgroup_bases() if backend == "local" else []
        owned = f"aligngym-{owner.pid}-"
        assert not cgroup_bases or _cgroups_named(cgroup_bases, owned), "the owner's sandboxes had no cgroups"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    killed = time.monotonic()

    # Processes: the sleepers and the whole sandbox machinery the owner had started.
    died = wait_until(lambda: not marker_pids(marker) and not still_alive(tree), 10)
    assert died is not None, (marker_pids(marker), still_alive(tree))
    print(f"\n{backend}: every process of the SIGKILLed owner gone {died:.2f}s after the kill")

    # Containers: the reaper removes what the executors' exits (auto_remove) did not.
    if client is not None:
        from aligngym.sandboxes import reap_orphans

        reap_orphans(client)
        assert wait_until(lambda: not containers_of(client, owner.pid), 20) is not None, containers_of(
            client, owner.pid
        )
        print(f"{backend}: containers of the dead owner gone {time.monotonic() - killed:.2f}s after the kill")

    # Temp directories and cgroups: the next process's first sandbox reaps those of dead owners (docker:
    # the lanes of containers that were starting at the kill).
    from aligngym.sandboxes.owner import reap_local_orphans

    reaped = reap_local_orphans(str(private))
    if backend == "local":
        from aligngym.sandboxes import limits

        assert reaped >= 1
        limits.reap_orphan_cgroups()
        left = _cgroups_named(cgroup_bases, owned)
        assert not left, f"cgroups left by the killed owner: {left}"
    left = leftover_dirs(str(private))
    if left:
        import shutil

        shutil.rmtree(private, ignore_errors=True)  # clean up after the known leak
        raise TempDirsLeft(f"sandbox temp directories left by the killed owner: {left}")


# -- an owner that died while a cgroup v1 tree was frozen for its kill -------------------------------
FROZEN_OWNER = """
import json, os, subprocess, time
from aligngym.sandboxes import limits
cgroup = limits.new_cgroup(limits.cgroup_parent(), memory_bytes=64 << 20, pids=8, cpus=1)
sleeper = subprocess.Popen(cgroup.wrap(["sleep", "600"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
procs = os.path.join(cgroup.path, "cgroup.procs")
while str(sleeper.pid) not in open(procs).read().split():
    time.sleep(0.01)
limits._freeze(cgroup.paths["freezer"])  # the first step of a kill; the owner dies right after it
state = open(os.path.join(cgroup.paths["freezer"], "freezer.state")).read().strip()
print(json.dumps({"pid": sleeper.pid, "dirs": cgroup.dirs(), "state": state}), flush=True)
os._exit(0)
"""


def test_reaper_thaws_and_removes_a_cgroup_left_frozen():
    """Attack on the harness: the owner dies between freezing a run's cgroup and killing it. Expected: the
    reaper thaws it, so its SIGKILL takes, and removes every controller's directory."""
    from aligngym.sandboxes import limits

    parent = limits.cgroup_parent()
    if not (isinstance(parent, dict) and "freezer" in parent):
        pytest.skip("needs root and the cgroup v1 freezer controller (kills elsewhere are atomic already)")
    out = subprocess.run([sys.executable, "-c", FROZEN_OWNER], capture_output=True, text=True, timeout=60)
    info = json.loads(out.stdout or "null")
    assert info and info["state"] == "FROZEN", out.stderr
    limits.reap_orphan_cgroups()  # other xdist workers' reapers may get there first: the same code

    def stopped() -> bool:
        try:
            with open(f"/proc/{info['pid']}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead, its new parent yet to reap it
        except FileNotFoundError:
            return True

    assert wait_until(stopped, 10) is not None, f"the frozen sleeper {info['pid']} outlived the reaper"
    assert wait_until(lambda: not any(os.path.exists(d) for d in info["dirs"]), 10) is not None, [
        d for d in info["dirs"] if os.path.exists(d)
    ]
