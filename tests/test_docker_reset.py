"""Docker containers reused between episodes: the reset (adversarial episodes), the fork server, the warm pool,
and the event loop kept free while containers are created, reset and removed."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
import uuid

import pytest
from _helpers import docker_up, pids_with

from aligngym.sandboxes import DockerPool, DockerSandbox, SandboxConfig, ensure_image
from aligngym.sandboxes import docker_backend as backend
from aligngym.sandboxes.pool import SandboxPool

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not docker_up(), reason="no Docker daemon (docker info fails); start one: .ci/dockerd.sh"
    ),
]

#: Every place the episode could write, found by trying (the probe looks for the marker in each).
_WRITE_EVERYWHERE = """
import os
found = []
for top, dirs, _ in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys")]
    try:
        with open(os.path.join(top, "MARKER"), "w") as f:
            f.write("x")
        found.append(top)
    except OSError:
        pass
print(repr(found))
"""

#: What the next episode must not see; prints a JSON object of everything it found (all empty: clean).
_PROBE = """
import ctypes, json, os, socket, stat
marker = "MARKER"
me, seen = os.getpid(), {}
ancestors = {me, os.getppid(), 1}
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if int(pid) not in ancestors and b"fork server" not in cmd:  # pid 1, the fork server and this run
        procs.append(cmd.decode(errors="replace")[:80])
seen["processes"] = procs
own = os.path.dirname(__file__)  # this probe's own code directory in /tmp
listed = {d: sorted(set(os.listdir(d)) - {os.path.basename(own)}) for d in
          ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue") if os.path.isdir(d)}
seen["files"] = {d: names for d, names in listed.items() if names}
seen["planted"] = [p for p in WRITABLE if os.path.exists(os.path.join(p, marker))]
seen["mode"] = oct(stat.S_IMODE(os.stat("/sandbox").st_mode))
used = {d: (lambda s: s.f_blocks - s.f_bfree)(os.statvfs(d)) for d in ("/sandbox", "/tmp", "/dev/shm")}
used["/tmp"] -= -(-os.stat(__file__).st_size // os.statvfs("/tmp").f_frsize)  # this probe's own file
seen["tmpfs"] = {d: n for d, n in used.items() if n}
seen["ipc"] = {k: open(f"/proc/sysvipc/{k}").read().splitlines()[1:] for k in ("shm", "sem", "msg")}
seen["ipc"] = {k: v for k, v in seen["ipc"].items() if v}
seen["env"] = [k for k, v in os.environ.items() if marker in k or marker in v]
reach = []
for family, address in ((socket.AF_INET, ("127.0.0.1", PORT)), (socket.AF_UNIX, "\\0" + marker)):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.connect(address)
        reach.append(str(address))
    except OSError:
        pass
    finally:
        s.close()
seen["sockets"] = reach
print(json.dumps(seen))
"""

#: Adversarial episodes: each plants something the next one must not see (MARKER, PORT substituted).
_EPISODES = {
    "daemons": """
        import os, subprocess, time
        subprocess.Popen(["setsid", "nohup", "bash", "-c", "exec -a MARKER-bg sleep 300"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if os.fork() == 0:  # a double fork without exec, out of the run's session
            os.setsid()
            if os.fork() == 0:
                os.environ["MARKER"] = "1"
                time.sleep(300)
            os._exit(0)
        time.sleep(0.2)
    """,
    "listening sockets": """
        import os, socket, time
        if os.fork() == 0:
            os.setsid()
            tcp = socket.socket(); tcp.bind(("127.0.0.1", PORT)); tcp.listen()
            unix = socket.socket(socket.AF_UNIX); unix.bind("\\0MARKER"); unix.listen()
            time.sleep(300)
        time.sleep(0.3)
    """,
    "cwd permissions and deep trees": """
        import os
        os.makedirs("a/b/c", exist_ok=True)
        open("a/b/c/MARKER", "w").close()
        os.chmod("a/b", 0)
        os.chmod("a", 0o500)
        os.mkfifo("/tmp/fifo-MARKER")
        os.symlink("/etc/passwd", "/tmp/link-MARKER")
        os.chmod("/sandbox", 0o777)
    """,
    "full tmpfs and an open deleted file": """
        import os, time
        try:  # /dev/shm to the brim (docker's 64 MiB: well below the memory limit); some of the others
            with open("/dev/shm/fill-MARKER", "wb") as f:
                while True:
                    f.write(b"x" * (1 << 20))
        except OSError:
            pass
        for directory in ("/tmp", "/sandbox"):
            with open(f"{directory}/fill-MARKER", "wb") as f:
                f.write(b"x" * (32 << 20))
        if os.fork() == 0:
            os.setsid()
            held = open("/tmp/held-MARKER", "wb"); held.write(b"y" * (4 << 20)); held.flush()
            os.unlink("/tmp/held-MARKER")
            time.sleep(300)
        time.sleep(0.3)
    """,
    "System V shared memory": """
        import ctypes
        libc = ctypes.CDLL(None)
        assert libc.shmget(0, 1 << 20, 0o1600) >= 0  # IPC_PRIVATE, IPC_CREAT | 0600
        assert libc.semget(0, 1, 0o1600) >= 0
    """,
    "environment": """
        import os
        os.environ["MARKER"] = "MARKER"
        open(os.path.expanduser("~/.bashrc"), "w").write("export MARKER=1\\n")
    """,
}


@pytest.fixture(scope="module")
def image() -> str:
    return ensure_image()


@pytest.fixture
def pool(image):
    pool = DockerPool(size=0, max_live=4)
    yield pool
    pool.shutdown()


def _fill(text: str, marker: str, port: int, writable: list[str] | None = None) -> str:
    text = textwrap.dedent(text).replace("MARKER", marker).replace("PORT", str(port))
    return text.replace("WRITABLE", repr(writable or []))


@pytest.mark.parametrize("name", list(_EPISODES))
def test_the_next_episode_in_a_reset_container_sees_nothing_of_the_last(pool, name):
    marker, port = f"agym{uuid.uuid4().hex[:10]}", 20000 + uuid.uuid4().int % 20000
    with DockerSandbox(SandboxConfig(timeout=20, memory_mb=256), pool=pool) as sb:
        assert sb.run("print(1)", isolated=True).ok  # the fork server is up and must survive the reset too
        writable = eval(sb.run(_fill(_WRITE_EVERYWHERE, marker, port)).stdout)
        assert "/sandbox" in writable and "/tmp" in writable, writable
        sb.run(_fill(_EPISODES[name], marker, port), timeout=20)
        before = sb.container_id
        sb.reset()
        assert pids_with(marker) == []
        seen = json.loads(sb.run(_fill(_PROBE, marker, port, writable)).stdout)
        assert seen == {
            "processes": [],
            "files": {},
            "planted": [],
            "mode": "0o700",
            "tmpfs": {},
            "ipc": {},
            "env": [],
            "sockets": [],
        }, seen
        assert sb.run("print(2)", isolated=True).stdout == "2\n"
    # Reset in place, not replaced: what the episode planted was all cleanable.
    assert sb.container_id == before and pool.replaced == [], pool.replaced


def test_a_tree_too_deep_to_wipe_replaces_the_container(pool):
    deep = "import os\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\nopen('leaf', 'w').close()\n"
    with DockerSandbox(SandboxConfig(timeout=20), pool=pool) as sb:
        assert sb.run(deep).ok
        before = sb.container_id
        sb.reset()
        assert sb.container_id != before and len(pool.replaced) == 1, pool.replaced
        assert sb.run("import os; print(os.listdir('.'))").stdout == "[]\n"


def test_a_reset_interrupts_runs_in_flight_and_keeps_the_container(pool):
    marker = f"agym{uuid.uuid4().hex[:10]}"
    with DockerSandbox(SandboxConfig(timeout=30), pool=pool) as sb:

        async def scenario() -> None:
            run = asyncio.ensure_future(sb.arun(f"exec -a {marker} sleep 300", "bash"))
            while not pids_with(marker):
                await asyncio.sleep(0.02)
            await asyncio.to_thread(sb.reset)
            result = await run
            assert result.status == "sandbox_error" and "reset" in result.stderr, result

        before = sb.container_id
        asyncio.run(scenario())
        assert sb.container_id == before and pids_with(marker) == []


# -- the fork server -----------------------------------------------------------------------------------
_FORKED = """
import atexit, os, sys, threading
print(__name__, sys.argv[0].endswith("main.py"), sys.flags.isolated, "decimal" in sys.modules)
print(os.getpgid(0) == os.getpid(), os.getpriority(os.PRIO_PROCESS, 0), sys.stdin.read())
import json
json.poisoned = True  # the next run must not see it: it forks from the server, never from this run
threading.Thread(target=lambda: print("thread joined")).start()
atexit.register(lambda: print("atexit ran"))
sys.exit(3)
"""


def test_isolated_python_runs_fork_from_a_warm_interpreter_each_in_a_fresh_process(pool):
    with DockerSandbox(SandboxConfig(timeout=10), pool=pool) as sb:
        sb.run("pass", isolated=True)  # starts the server in the background
        pids = set()
        for _ in range(20):  # until the server serves (it starts while runs are spawned)
            result = sb.run(_FORKED, stdin="in", isolated=True)
            if result.stdout.startswith("__main__ True 1 True"):
                break
        assert result.stdout.splitlines() == [
            "__main__ True 1 True",
            "True 19 in",
            "thread joined",
            "atexit ran",
        ], result
        assert result.exit_code == 3 and result.status == "error"
        clean = sb.run("import json, os; print(hasattr(json, 'poisoned'), os.getpid())", isolated=True)
        assert clean.stdout.split()[0] == "False", clean
        for _ in range(3):
            pids.add(sb.run("import os; print(os.getpid())", isolated=True).stdout)
        assert len(pids) == 3
        err = sb.run("raise ValueError('boom')", isolated=True)
        assert err.exit_code == 1 and "ValueError: boom" in err.stderr and 'main.py", line 1' in err.stderr
        slow = sb.run("while True: pass", isolated=True, timeout=1)
        assert slow.status == "timeout", slow


_SERVER_PID = (
    "import os\n"
    "print(next(p for p in os.listdir('/proc') if p.isdigit() and p != '1' and b'fork server' in "
    "open(f'/proc/{p}/cmdline', 'rb').read()))\n"
)


@pytest.mark.parametrize("attack", ["SIGSTOP", "SIGKILL", "ptrace"])
def test_programs_cannot_tamper_with_the_fork_server(pool, attack):
    with DockerSandbox(SandboxConfig(timeout=10), pool=pool) as sb:
        for _ in range(20):
            if (found := sb.run(_SERVER_PID, isolated=True)).ok:
                break
        server = int(found.stdout)
        if attack == "ptrace":
            probe = sb.run(
                f"import os\nfor path in ('/proc/{server}/fd/3', '/proc/{server}/mem', '/proc/{server}/environ'):\n"
                "    try:\n        open(path, 'rb').read(1)\n        print('opened', path)\n"
                "    except OSError:\n        pass\n"
            )
            assert probe.stdout == "", probe  # undumpable: its socket and memory are out of reach
        else:
            assert sb.run(f"import os, signal; os.kill({server}, signal.{attack})").ok
        sb.reset()
        # The next user's isolated runs work: a stopped server was killed by the reset, a dead one replaced.
        results = [sb.run("print(7)", isolated=True, timeout=10) for _ in range(5)]
        assert all(r.stdout == "7\n" for r in results), results


# -- the pool and the event loop ----------------------------------------------------------------------
def test_the_warm_pool_grows_with_demand_up_to_the_cap(image):
    pool = DockerPool(size=1, max_live=8)
    spec = backend._Spec.of(SandboxConfig())
    try:
        held = [DockerSandbox(SandboxConfig(), pool=pool) for _ in range(3)]  # demand past the one spare
        wanted = pool.wanted(spec)
        assert 2 <= wanted <= 4 and pool.live <= pool.max_live
        deadline = time.monotonic() + 120
        while len(pool._spares.get(spec, ())) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)  # the filler starts spares in the background
        spares = {c.id for c in pool._spares[spec]}
        assert len(spares) == wanted and pool.live == len(held) + wanted <= pool.max_live
        more = [DockerSandbox(SandboxConfig(), pool=pool) for _ in range(wanted)]
        assert {s.container_id for s in more} == spares  # every one of them was already warm
        for sandbox in held + more:
            sandbox.close()
        capped = DockerPool(size=1, max_live=2)
        try:
            for _ in range(3):
                with DockerSandbox(SandboxConfig(), pool=capped):
                    pass
            assert capped.wanted(spec) <= capped.max_live and capped.live <= capped.max_live
        finally:
            capped.shutdown()
    finally:
        pool.shutdown()


def _blocking(target: object, name: str, gate: threading.Event, entered: threading.Event) -> None:
    real = getattr(target, name)

    def held(*args: object, **kwargs: object) -> object:
        entered.set()
        assert gate.wait(60)
        return real(*args, **kwargs)

    setattr(target, name, held)


@pytest.mark.parametrize("step", ["create", "reset", "remove"])
def test_the_event_loop_keeps_serving_while_a_container_is_created_reset_or_removed(image, step, monkeypatch):
    pool = DockerPool(size=0, max_live=2)
    config = SandboxConfig(timeout=10)
    gate, entered = threading.Event(), threading.Event()
    served: list[int] = []

    async def scenario() -> None:
        sandbox = None if step == "create" else await DockerSandbox.acreate(config, pool=pool)
        if step == "create":
            _blocking(pool.client.api, "create_container", gate, entered)
            work = asyncio.ensure_future(DockerSandbox.acreate(config, pool=pool))
        elif step == "reset":
            _blocking(sandbox, "_reset_in", gate, entered)
            sandboxes = SandboxPool("docker", size=1)
            sandboxes._busy.add(sandbox)  # as if the pool had handed it out
            work = asyncio.ensure_future(sandboxes.arelease(sandbox))
        else:
            _blocking(pool.client.api, "remove_container", gate, entered)
            work = asyncio.ensure_future(sandbox.aclose())
        await asyncio.to_thread(entered.wait, 60)  # the daemon call is in progress, held at the gate
        for tick in range(3):  # other tasks still run meanwhile
            served.append(await asyncio.sleep(0, tick))
        assert not work.done()
        gate.set()
        made = await work
        if step == "reset":
            await asyncio.to_thread(sandboxes.close)  # closes the reset sandbox it now keeps idle
        for sb in (made, sandbox):
            if isinstance(sb, DockerSandbox):
                await sb.aclose()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        gate.set()
        pool.shutdown()
    assert served == [0, 1, 2]
