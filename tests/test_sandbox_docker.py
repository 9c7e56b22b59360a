"""The docker sandbox, checked against a real daemon: limits, isolation, files, the pool, the cap and the reaper."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import ipaddress
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time

import pytest
from _helpers import barrier_program, docker_up

from aligngym.sandboxes import (
    DockerPool,
    DockerSandbox,
    SandboxConfig,
    SandboxError,
    docker_image,
    docker_pool,
    ensure_image,
    make_sandbox,
    reap_orphans,
)
from aligngym.sandboxes import docker_backend as backend
from aligngym.sandboxes.owner import start_stamp

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not docker_up(), reason="no Docker daemon (docker info fails); start one: .ci/dockerd.sh"
    ),
]


@pytest.fixture(scope="session")
def image() -> str:
    return ensure_image()  # cached: built once per machine (debootstrap tarball in ~/.cache/aligngym)


@pytest.fixture(scope="session")
def client(image):
    import docker

    return docker.from_env()


@pytest.fixture
def sb(image):
    sandbox = make_sandbox("docker", timeout=5)
    yield sandbox
    sandbox.close()


def _mine(client, pid: int) -> list[dict]:
    return client.api.containers(all=True, filters={"label": f"aligngym.owner_pid={pid}"})


# -- running ----------------------------------------------------------------------------------------
def test_ok_error_bash_and_stdin(sb):
    assert isinstance(sb, DockerSandbox)
    r = sb.run("print(1)")
    assert (r.status, r.stdout, r.stderr, r.exit_code, r.truncated) == ("ok", "1\n", "", 0, False)
    assert r.duration_s > 0
    r = sb.run("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)")
    assert (r.status, r.exit_code, r.stderr) == ("error", 3, "boom\n")
    r = sb.run("echo hi; echo err >&2; exit 4", language="bash")
    assert (r.status, r.exit_code, r.stdout, r.stderr) == ("error", 4, "hi\n", "err\n")
    assert sb.run("import sys; print(sys.stdin.read().upper())", stdin="abc").stdout == "ABC\n"
    assert sb.run("print('done')", stdin=b"x" * (4 << 20)).stdout == "done\n"  # stdin never read
    with pytest.raises(ValueError, match="unknown language"):
        sb.run("1", language="ruby")


def test_timeout_kills_a_double_forked_setsid_grandchild(sb):
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the grandchild: its own session, orphaned, ignoring TERM and HUP
        os.execv("/bin/sh", ["/bin/sh", "-c", "trap '' TERM HUP; echo up > started.txt; sleep 1.5; echo alive > late.txt"])
    os._exit(0)
while not os.path.exists("started.txt"):
    time.sleep(0.01)
time.sleep(60)
"""
    r = sb.run(code, timeout=1)
    assert r.status == "timeout" and r.exit_code is None and r.duration_s >= 0.95
    assert sb.read_file("started.txt") == "up\n"
    ps = "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()))"
    assert sb.run(ps).stdout == "[1]\n"  # only the executor is left
    time.sleep(1.6)
    with pytest.raises(FileNotFoundError):
        sb.read_file("late.txt")


def test_output_limit(sb):
    r = sb.run("yes", language="bash")
    assert (r.status, r.truncated, r.exit_code) == ("output_limit", True, None)
    assert len(r.stdout) == 1 << 20 and set(r.stdout) == {"y", "\n"}


def test_memory_limit(image):
    with make_sandbox("docker", memory_mb=256, timeout=20) as sandbox:
        r = sandbox.run("b = bytearray(2 * 1024**3)")
        assert r.status == "memory", r
        assert sandbox.run("print('executor survived')").stdout == "executor survived\n"


def test_cancelled_arun_kills_its_program(sb):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sb.arun("import time; time.sleep(1); open('late.txt', 'w')"), 0.3)

    asyncio.run(main())
    time.sleep(1.2)
    with pytest.raises(FileNotFoundError):
        sb.read_file("late.txt")


def test_concurrent_arun_with_gather(sb):
    async def main():
        results = await asyncio.gather(
            *(sb.arun(barrier_program("gather", i, 4), timeout=30) for i in range(4))
        )
        return results, sb.run("print('nested')")

    results, nested = asyncio.run(main())
    # In flight together: each saw all four check in (one after another, the first would wait alone).
    assert [r.stdout for r in results] == [f"{i} True\n" for i in range(4)] and all(r.ok for r in results)
    assert nested.stdout == "nested\n"


def test_async_context_manager_and_acreate(image):
    async def main():
        async with await DockerSandbox.acreate(SandboxConfig(timeout=5)) as sandbox:
            return await sandbox.arun("echo hi", language="bash"), sandbox

    r, sandbox = asyncio.run(main())
    assert r.stdout == "hi\n" and sandbox._closed


def test_executor_death_is_a_sandbox_error_and_the_container_is_replaced(sb, client):
    before = sb.container_id
    sb.write_files({"keep.txt": "x"})

    async def main():
        run = asyncio.ensure_future(sb.arun("import time; time.sleep(10)"))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(client.api.kill, before)
        return await run

    r = asyncio.run(main())
    assert r.status == "sandbox_error" and r.exit_code is None, r
    assert sb.run("import os; print(os.listdir('.'))").stdout == "[]\n"  # a fresh container
    assert sb.container_id != before


# -- isolation --------------------------------------------------------------------------------------
def test_no_network(image, client):
    ipam = client.api.inspect_network("bridge")["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(ipaddress.ip_network(ipam["Subnet"])[1])  # the host's bridge address
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    port = server.getsockname()[1]
    code = f"""
import socket
for host in ("127.0.0.1", "{gateway}"):
    try:
        socket.create_connection((host, {port}), timeout=2).close()
        print(host, "reached")
    except OSError as exc:
        print(host, "blocked", type(exc).__name__)
try:
    socket.gethostbyname("example.com")
    print("dns reached")
except OSError:
    print("dns blocked")
"""
    try:
        with make_sandbox("docker", timeout=10) as closed:
            lines = closed.run(code).stdout.splitlines()
            assert [line.split()[1] for line in lines] == ["blocked"] * 3, lines
            ifaces = closed.run("import socket; print(sorted(n for _, n in socket.if_nameindex()))").stdout
            assert ifaces == "['lo']\n"
        # With network=True the same program reaches the host through the bridge: the check above means something.
        with make_sandbox("docker", timeout=10, network=True) as open_net:
            assert f"{gateway} reached" in open_net.run(code).stdout
    finally:
        server.close()


def test_nobody_read_only_root_and_a_private_channel(sb):
    code = """
import os
print(os.getuid(), os.getgid(), os.getcwd())
for path in ["/etc/agym-probe", "/usr/agym-probe", "/agym-probe", "/proc/1/fd/1", "/proc/1/mem"]:
    try:
        open(path, "w")
        print("wrote", path)
    except OSError:
        pass
open("/tmp/scratch", "w").write("tmp is writable")
"""
    r = sb.run(code)
    assert r.ok, r.stderr
    assert r.stdout.splitlines() == ["65534 65534 /sandbox"]


def test_host_environment_not_visible(image, monkeypatch):
    monkeypatch.setenv("AGYM_TEST_SECRET", "hunter2")
    with make_sandbox("docker", env={"EXTRA": "yes"}) as sandbox:
        r = sandbox.run("import os; print(sorted(os.environ)); print(os.environ['EXTRA'])")
        keys = set(ast.literal_eval(r.stdout.splitlines()[0])) - {"PWD", "LC_CTYPE"}
        assert keys == {
            "PATH",
            "HOME",
            "LANG",
            "PYTHONDONTWRITEBYTECODE",
            "PYTHONUNBUFFERED",
            "PYTHONPATH",
            "EXTRA",
            "ALIGNGYM_RUN",  # the run's marker, so its daemons are known to belong to it
        }
        assert r.stdout.splitlines()[1] == "yes"
        assert "hunter2" not in sandbox.run("cat /proc/1/environ; env", language="bash").stdout


def test_container_security_options_and_labels(sb, client):
    info = client.api.inspect_container(sb.container_id)
    host, config = info["HostConfig"], info["Config"]
    cfg = sb.config
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert host["ReadonlyRootfs"] is True
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == cfg.pids + backend.EXECUTOR_PIDS
    assert host["Memory"] == host["MemorySwap"] == (cfg.memory_mb + backend.EXECUTOR_MEMORY_MB) << 20
    assert host["NanoCpus"] == int(cfg.cpus * 1e9)
    assert set(host["Tmpfs"]) == {"/sandbox", "/tmp"} and "uid=65534" in host["Tmpfs"]["/sandbox"]
    assert host["AutoRemove"] is True
    # The one bind mount is the executor's lane: a read-only host directory holding only its socket.
    assert [bind.split(":", 1)[1] for bind in host["Binds"]] == ["/run/aligngym:ro"]
    assert config["User"] == "65534:65534" and config["Image"] == "aligngym-sandbox:latest"
    assert config["Labels"]["aligngym"] == "1"
    assert config["Labels"]["aligngym.owner_pid"] == str(os.getpid())
    assert config["Labels"]["aligngym.owner_host"] == socket.gethostname()
    assert config["Labels"]["aligngym.owner_start"] == start_stamp(os.getpid())


# -- working directory and files --------------------------------------------------------------------
def test_workdir_persists_and_new_sandbox_starts_clean(sb, client):
    assert sb.run("open('state.txt', 'w').write('42')").ok
    assert sb.run("print(open('state.txt').read())").stdout == "42\n"
    sb.write_files({"helper_mod.py": "VALUE = 7\n"})
    assert sb.run("import helper_mod; print(helper_mod.VALUE)").stdout == "7\n"
    with make_sandbox("docker") as fresh:
        assert fresh.run("import os; print(os.listdir('.'))").stdout == "[]\n"
    cid = sb.container_id
    sb.close()
    sb.close()  # idempotent
    import docker

    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(cid)
    with pytest.raises(SandboxError, match="closed"):
        sb.run("print(1)")
    with pytest.raises(SandboxError, match="closed"):
        sb.read_file("state.txt")


def test_write_files_read_file_round_trip(sb):
    sb.write_files({"data/in.txt": "héllo", "raw.bin": b"\x00\xff\x10"})
    code = "import os\ns = open('data/in.txt').read()\nopen('data/out.txt', 'w').write(s.upper())\nos.remove('data/in.txt')"
    assert sb.run(code).ok
    assert sb.read_file("data/out.txt") == "HÉLLO"
    assert sb.read_bytes("raw.bin") == b"\x00\xff\x10"
    with pytest.raises(FileNotFoundError):
        sb.read_file("data/in.txt")
    with make_sandbox("docker", max_file_mb=1) as small:
        with pytest.raises(SandboxError, match="file limit"):
            small.write_files({"x.bin": b"x" * (2 << 20)})
        assert small.run("open('big.bin', 'wb').write(b'x' * (2 << 20))").status == "error"  # RLIMIT_FSIZE


def test_path_escapes_refused(sb):
    for bad in ["../x", "/etc/passwd", "a/../../x", "", "./..", "data/../../../etc/passwd"]:
        with pytest.raises(SandboxError):
            sb.write_files({bad: "x"})
        with pytest.raises(SandboxError):
            sb.read_file(bad)
    code = """
import os
os.symlink('/etc/passwd', 'passwd_link')
os.symlink('/tmp', 'tmp_dir')
open('real.txt', 'w').write('inside')
os.symlink('real.txt', 'alias')
os.mkfifo('fifo')
"""
    assert sb.run(code).ok
    for planted in ["passwd_link", "tmp_dir/x.txt"]:
        with pytest.raises(SandboxError, match="outside"):
            sb.read_file(planted)
        with pytest.raises(SandboxError, match="outside"):
            sb.write_files({planted: "pwned"})
    assert sb.run("import os; print(os.path.exists('/tmp/x.txt'))").stdout == "False\n"
    assert sb.read_file("alias") == "inside"  # a symlink that stays inside is fine
    with pytest.raises(SandboxError, match="regular file"):
        sb.read_file("fifo")


def test_any_local_image_with_python3(image):
    # The bare debootstrap image has no WORKDIR, USER or labels: the backend sets everything it needs.
    with make_sandbox("docker", image=docker_image.base_image()) as sandbox:  # the builder's own name
        assert sandbox.run("import os; print(os.getuid(), os.getcwd())").stdout == "65534 /sandbox\n"
    with pytest.raises(SandboxError, match="aligngym sandbox build"):
        make_sandbox("docker", image="aligngym-no-such-image:latest")


# -- pool, cap, reaper ------------------------------------------------------------------------------
def test_global_cap_blocks_until_a_sandbox_closes(image):
    pool, cfg = DockerPool(size=0, max_live=2), SandboxConfig(timeout=5)
    opened: list[DockerSandbox] = []
    try:
        opened += [DockerSandbox(cfg, pool=pool), DockerSandbox(cfg, pool=pool)]
        with concurrent.futures.ThreadPoolExecutor(1) as workers:
            third = workers.submit(DockerSandbox, cfg, pool=pool)
            time.sleep(1.0)
            assert not third.done() and pool.live == 2
            with pytest.raises(SandboxError, match="no sandbox slot"):
                pool.acquire(backend._Spec.of(cfg), timeout=0.2)

            async def waits_without_blocking_the_loop():
                ticks = 0

                async def tick():
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.05)
                        ticks += 1

                ticker = asyncio.ensure_future(tick())
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(DockerSandbox.acreate(cfg, pool=pool), 0.5)
                ticker.cancel()
                return ticks

            assert asyncio.run(waits_without_blocking_the_loop()) >= 5
            opened.pop(0).close()
            opened.append(third.result(timeout=30))
        assert opened[-1].run("print(1)").ok
        assert pool.live <= 2
    finally:
        for sandbox in opened:
            sandbox.close()
        pool.shutdown()


def test_warm_pool_hands_out_started_containers(image):
    pool = DockerPool(size=1, max_live=4)
    try:
        with DockerSandbox(SandboxConfig(), pool=pool) as first:
            first.run("pass")
        deadline = time.monotonic() + 20
        while not pool._spares.get(backend._Spec.of(SandboxConfig())) and time.monotonic() < deadline:
            time.sleep(0.05)
        spares = {c.id for c in pool._spares[backend._Spec.of(SandboxConfig())]}
        with DockerSandbox(SandboxConfig(), pool=pool) as second:
            assert second.container_id in spares  # a started spare: no container start on this path
            assert second.run("print(1)").ok
    finally:
        pool.shutdown()


def test_programs_run_below_the_executor_priority(sb):
    # The executor's timer shares the container's CPUs with the program: a fork bomb at equal weight
    # starved it and the kill came a second late (CI). Nice 19 for the whole run keeps the executor on time.
    r = sb.run("import os, subprocess; print(os.getpriority(os.PRIO_PROCESS, 0)); subprocess.run(['nice'])")
    assert r.stdout.split() == ["19", "19"], r


def test_close_returns_once_the_container_is_gone_even_when_auto_remove_races_it(image, client):
    # close() ends the channel (the executor exits, auto_remove starts) and force-removes. On busy CPUs the
    # daemon's own removal often wins and the force-remove gets 409 "removal in progress": close() must then
    # wait, not return while the container is still listed as "removing". Burners make the race common.
    import docker

    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() + 1)
    ]
    still_there = []
    try:
        for _ in range(30):
            sandbox = make_sandbox("docker")
            assert sandbox.run("pass").ok
            cid = sandbox.container_id
            sandbox.close()
            try:
                still_there.append(client.api.inspect_container(cid)["State"]["Status"])
            except docker.errors.NotFound:
                pass
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert still_there == []


_OWNER = """
import sys, time
import docker
from aligngym.sandboxes import make_sandbox
a, b = make_sandbox("docker"), make_sandbox("docker")
assert a.run("print(1)").ok and b.run("print(2)").ok
docker.from_env().api.pause(b.container_id)  # a hung executor: it will never see its host go away
print(a.container_id, b.container_id, flush=True)
time.sleep(600)
"""


def test_reaper_after_kill_9_of_the_owner(image, client):
    env = {**os.environ, "ALIGNGYM_DOCKER_POOL": "0"}
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        ids = owner.stdout.readline().split()
        assert len(ids) == 2, "the owner subprocess failed"
        assert len(_mine(client, owner.pid)) == 2
        # paused, it can never notice its owner die and exit: only a reaper can remove it
        assert client.api.inspect_container(ids[1])["State"]["Paused"]
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    # Other xdist workers reap on their first docker use too, so the paused one may already be gone;
    # whoever reaps, it is this same reaper code that has to remove both.
    reap_orphans(client)
    deadline = time.monotonic() + 15
    while _mine(client, owner.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _mine(client, owner.pid) == []


def test_reaper_checks_the_start_time_against_pid_reuse(image, client):
    labels = backend.owner_labels()
    command = ["python3", "-c", "pass"]
    reused = client.api.create_container(image, command, labels={**labels, "aligngym.owner_start": "x:1"})[
        "Id"
    ]
    live = client.api.create_container(image, command, labels=labels)["Id"]
    try:
        reap_orphans(client)
        ids = {c["Id"] for c in _mine(client, os.getpid())}
        assert reused not in ids and live in ids
    finally:
        client.api.remove_container(live, force=True)


def test_warm_run_latency(sb):
    sb.run("print(1)")
    times = []
    for _ in range(20):
        start = time.monotonic()
        assert sb.run("print(1)").ok
        times.append(time.monotonic() - start)
    times.sort()
    print(
        f"\ndocker warm print(1): median {statistics.median(times) * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms"
    )


def test_factory_builds_docker_sandboxes(image):
    assert backend.SANDBOX_DIR == "/sandbox" and SandboxConfig().image == "aligngym-sandbox:latest"
    source = textwrap.dedent(backend._EXECUTOR_SOURCE)
    compile(source, "executor.py", "exec")  # shipped as `python3 -c`, so it must stand alone
    compile(docker_pool.executor_source(), "executor.py", "exec")  # with the fork server's source in front
    with make_sandbox("docker", config=SandboxConfig(pids=9), timeout=3) as sandbox:
        assert (sandbox.config.timeout, sandbox.config.pids) == (3, 9)


def test_cli_sandbox_build_uses_the_cached_image_and_rejects_unknown_pythons(image):
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "aligngym", "sandbox", "build"], capture_output=True, text=True, timeout=600
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "aligngym", "sandbox", "build", "--python", "2.7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "2.7" in bad.stderr


def test_one_cap_counts_sandboxes_of_every_backend(image):
    """ALIGNGYM_MAX_SANDBOXES is one process-wide cap: a docker container and a local sandbox share it."""
    from aligngym.sandboxes import cap, make_sandbox

    old = cap.max_sandboxes()
    for thread in list(backend.default_pool()._filling.values()):
        thread.join(60)  # spares still starting would join the count below, then be evicted on demand
    while cap.evict_idle():  # warm spares left by other tests would be evicted on demand; drop them now
        pass
    docker_pool = DockerPool(size=0)
    try:
        cap.set_max_sandboxes(cap.live_sandboxes() + 2)
        local = make_sandbox("local")
        boxed = DockerSandbox(SandboxConfig(image=image), pool=docker_pool)
        assert boxed.run("print(1)").ok
        with pytest.raises(SandboxError, match="no sandbox slot"):
            make_sandbox("local", slot_timeout=1)  # both slots are taken, one of them by a container
        boxed.close()
        third = make_sandbox("local", slot_timeout=10)  # the container's slot came back
        third.close()
        local.close()
    finally:
        cap.set_max_sandboxes(old)
        docker_pool.shutdown()
