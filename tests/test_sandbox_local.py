"""The local sandbox, checked by behaviour: limits, isolation, file transfer and the unisolated fallback.

With bubblewrap, runs go through the warm fork server by default; the core tests also run in one-shot mode
(``fork_server=False``, a fresh bwrap per run) and unisolated.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest
from _helpers import barrier_program, interpreter_tmp_entries, pids_with

from aligngym.sandboxes import (
    LocalSandbox,
    SandboxConfig,
    SandboxError,
    bwrap_available,
    make_sandbox,
)
from aligngym.sandboxes import bwrap as bwrap_mod
from aligngym.sandboxes import forkserver as forkserver_mod
from aligngym.sandboxes import limits as limits_mod
from aligngym.sandboxes import local as local_mod
from aligngym.sandboxes.cap import live_sandboxes

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this machine")
MODES = [pytest.param(True, id="bwrap", marks=needs_bwrap), pytest.param(False, id="unisolated")]
ALL_MODES = [*MODES[:1], pytest.param("oneshot", id="oneshot", marks=needs_bwrap), *MODES[1:]]


def _make(mode: bool | str, **config) -> LocalSandbox:
    """``True``: bubblewrap with the fork server; ``"oneshot"``: a fresh bwrap per run; ``False``: unisolated."""
    if mode == "oneshot":
        config = {"fork_server": False, **config}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the unisolated warning has its own test
        sandbox = make_sandbox("local", use_bwrap=bool(mode), **{"timeout": 5, **config})
    assert isinstance(sandbox, LocalSandbox)
    assert sandbox.fork_server == (mode is True)
    return sandbox


@pytest.fixture(params=MODES)
def sb(request):
    sandbox = _make(request.param)
    yield sandbox
    sandbox.close()


@pytest.fixture(params=ALL_MODES)
def sb3(request):
    """The core behaviour, checked in all three ways of running."""
    sandbox = _make(request.param)
    yield sandbox
    sandbox.close()


@pytest.fixture
def bsb():
    """A bubblewrap sandbox with the fork server (for tests of isolation itself)."""
    sandbox = _make(True)
    yield sandbox
    sandbox.close()


@pytest.fixture(params=[pytest.param(True, id="fork"), pytest.param("oneshot", id="oneshot")])
def both_bwrap(request):
    """A bubblewrap sandbox, with the fork server and in one-shot mode."""
    if not bwrap_available():
        pytest.skip("bubblewrap is not usable on this machine")
    sandbox = _make(request.param)
    yield sandbox
    sandbox.close()


# -- running ----------------------------------------------------------------------------------------
def test_ok_run_reports_stdout(sb3):
    r = sb3.run("print(1)")
    assert (r.status, r.stdout, r.stderr, r.exit_code, r.truncated) == ("ok", "1\n", "", 0, False)
    assert r.ok and 0 < r.duration_s < 5


def test_error_exit_code_and_stderr(sb3):
    r = sb3.run("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)")
    assert (r.status, r.exit_code, r.stderr) == ("error", 3, "boom\n")
    r = sb3.run("raise KeyError('nope')")
    assert r.status == "error" and r.exit_code == 1 and "KeyError: 'nope'" in r.stderr


def test_bash_language_and_stdin(sb3):
    r = sb3.run("echo hi; echo err >&2; exit 3", language="bash")
    assert (r.status, r.exit_code, r.stdout, r.stderr) == ("error", 3, "hi\n", "err\n")
    r = sb3.run("import sys; print(sys.stdin.read().upper())", stdin="abc")
    assert r.stdout == "ABC\n"
    # A program that never reads a large stdin must not hang the writer.
    assert sb3.run("print('done')", stdin=b"x" * (4 << 20)).stdout == "done\n"
    with pytest.raises(ValueError, match="unknown language"):
        sb3.run("1", language="ruby")


def test_timeout_status_and_duration(sb3):
    r = sb3.run("while True:\n    pass", timeout=1)
    assert r.status == "timeout" and r.exit_code is None
    assert r.duration_s >= 0.95  # never before the limit; how late under load is for benchmarks/


def test_timeout_kills_background_children(sb3):
    # A background child that ignores TERM and HUP beats every 0.1 s: after the run ends, no beat may follow.
    code = "(trap '' TERM HUP; while :; do date +%s%N > beat.txt; sleep 0.1; done) & sleep 30"
    r = sb3.run(code, language="bash", timeout=0.5)
    assert r.status == "timeout", r
    beat = os.path.join(sb3.workdir, "beat.txt")
    last = Path(beat).read_text() if os.path.exists(beat) else None
    time.sleep(1)
    assert (Path(beat).read_text() if os.path.exists(beat) else None) == last, (r, sb3.limits_enforced)


def test_a_timeout_kill_gives_no_process_a_moment_to_act(sb3):
    # 25 parents (within the pids limit), each waiting for its child and writing a file the moment the child dies. A kill that
    # goes process by process wakes parents whose child went first: they would write before their own turn.
    # Busy CPUs preempt the killer mid-loop (how CI found it); on idle ones the window is too short to hit.
    code = "for i in $(seq 25); do (sleep 30; echo raced > raced.$i) & done; wait"
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() + 1)
    ]
    try:
        r = sb3.run(code, language="bash", timeout=1.5)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert r.status == "timeout", r
    time.sleep(0.5)
    raced = [name for name in os.listdir(sb3.workdir) if name.startswith("raced")]
    assert raced == [], (len(raced), sb3.limits_enforced)


def test_timeout_kills_a_double_forked_setsid_grandchild(both_bwrap):
    bsb = both_bwrap
    marker = f"agym-orphan-{uuid.uuid4().hex}"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the grandchild: its own session, orphaned, ignoring TERM and HUP
        script = "trap '' TERM HUP; echo up > started.txt; sleep 1.5; echo alive > late.txt"
        os.execv("/bin/sh", ["/bin/sh", "-c", script, "{marker}"])
    os._exit(0)
while not os.path.exists("started.txt"):
    time.sleep(0.01)
time.sleep(60)
"""
    r = bsb.run(code, timeout=1)
    assert r.status == "timeout"
    assert os.path.exists(os.path.join(bsb.workdir, "started.txt")), r.stderr
    assert pids_with(marker) == []
    time.sleep(1.5)
    assert not os.path.exists(os.path.join(bsb.workdir, "late.txt"))


def test_output_cap_kills_and_truncates(sb3):
    start = time.monotonic()
    r = sb3.run("yes", language="bash")
    assert (r.status, r.truncated, r.exit_code) == ("output_limit", True, None)
    assert len(r.stdout) == 1 << 20 and set(r.stdout) == {"y", "\n"}
    assert time.monotonic() - start < r.duration_s + 30  # killed at the cap, not left to its 5 s limit


def test_small_output_cap_on_stderr():
    with _make(False, max_output_bytes=1000) as sandbox:
        r = sandbox.run("import sys; sys.stderr.write('e' * 5000); print('fine')")
    assert r.status == "output_limit" and r.truncated and r.stderr == "e" * 1000


def test_memory_hog_reports_memory(sb3):
    r = sb3.run("b = bytearray(4 * 1024**3)")
    assert r.status == "memory", r
    r = sb3.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**8))")
    if "rlimit_as" in sb3.limits_enforced["memory"]:  # the allocation fails inside Python
        assert r.status == "memory" and "MemoryError" in r.stderr, r
    else:  # a cgroup alone: the kernel's OOM killer ends it
        assert r.status == "memory" and r.exit_code == 128 + 9, r


def test_file_size_limit(sb):
    big = sb.run("open('big.bin', 'wb').write(b'x' * (2 << 20))", timeout=5)
    assert big.ok  # 2 MiB is under the 64 MiB default
    with _make(False, max_file_mb=1) as small:
        r = small.run("open('big.bin', 'wb').write(b'x' * (2 << 20))")
        assert r.status == "error"  # SIGXFSZ
        assert os.path.getsize(os.path.join(small.workdir, "big.bin")) <= 1 << 20
        with pytest.raises(SandboxError, match="file limit"):
            small.write_files({"x.bin": b"x" * (2 << 20)})


def test_rlimits_without_prlimit(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "prlimit" else real_which(name, *a, **k)
    )
    with _make(False, max_file_mb=3) as sandbox:
        r = sandbox.run("import resource; print(resource.getrlimit(resource.RLIMIT_FSIZE)[0])")
        assert r.ok and int(r.stdout) == 3 << 20, r
        assert sandbox.run("b = bytearray(4 * 1024**3)").status == "memory"


@needs_bwrap
def test_pids_limit_stops_a_fork_loop():
    with _make(True, pids=16) as sandbox:
        assert sandbox.limits_enforced["pids"] != "none"
        code = """
import os, time
n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""
        r = sandbox.run(code)
    assert r.ok, r.stderr
    assert 0 < int(r.stdout) < 16


# -- isolation --------------------------------------------------------------------------------------
@needs_bwrap
def test_no_network(bsb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    code = f"""
import socket
import subprocess
import sys
for what, call in [("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2)),
                   ("dns", lambda: socket.gethostbyname("example.com"))]:
    try:
        call()
        print(what, "reached")
    except OSError as exc:
        print(what, "blocked", type(exc).__name__)
"""
    try:
        inside = bsb.run(code)
        assert "connect blocked" in inside.stdout and "dns blocked" in inside.stdout, inside
        # The same program reaches the server with the host network, so the check above means something.
        with _make(True, network=True) as open_net:
            assert "connect reached" in open_net.run(code).stdout
        with _make(False) as unisolated:
            assert "connect reached" in unisolated.run(code).stdout
    finally:
        server.close()


@needs_bwrap
def test_runs_as_nobody_with_a_read_only_host(bsb):
    home = os.path.expanduser("~")
    planted = os.path.join(home, f"agym-secret-{uuid.uuid4().hex}")
    code = f"""
import os
print(os.getuid(), os.getgid(), os.getcwd())
for path in ["/usr/agym-probe", "/etc/agym-probe", "/agym-probe", {home!r} + "/agym-probe"]:
    try:
        open(path, "w")
        print("wrote", path)
    except OSError:
        pass
for path in ["/etc/shadow", {planted!r}]:
    try:
        open(path).read()
        print("read", path)
    except OSError:
        pass
print(sorted(set(os.listdir("/tmp")) - {set(interpreter_tmp_entries())!r}), os.listdir("/run"))
"""  # a fresh /tmp (but for a venv that lives there); no host sockets (docker.sock, D-Bus) in /run
    with open(planted, "w") as f:
        f.write("secret")
    try:
        r = bsb.run(code)
    finally:
        os.remove(planted)
    assert r.ok, r.stderr
    assert r.stdout.splitlines() == ["65534 65534 /sandbox", "[] []"]
    assert bsb.limits_enforced["filesystem"] == "bwrap" and bsb.limits_enforced["network"] == "netns"


@needs_bwrap
def test_classic_bwrap_mode_runs(monkeypatch):
    monkeypatch.setattr(bwrap_mod, "mode", lambda: "classic")  # the mode used by non-root hosts
    with _make(True) as sandbox:
        assert sandbox.mode == "classic"
        r = sandbox.run("import os, socket; print(os.getuid(), socket.gethostname())")
    assert r.ok and r.stdout == "65534 sandbox\n", r


def test_host_environment_not_visible(monkeypatch):
    monkeypatch.setenv("AGYM_TEST_SECRET", "hunter2")
    for use_bwrap in [False] + ([True] if bwrap_available() else []):
        with _make(use_bwrap, env={"EXTRA": "yes"}) as sandbox:
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
            }
            assert r.stdout.splitlines()[1] == "yes"
            assert "hunter2" not in sandbox.run("env", language="bash").stdout


# -- working directory and files --------------------------------------------------------------------
def test_workdir_persists_and_new_sandbox_starts_clean(sb3):
    assert sb3.run("open('state.txt', 'w').write('42')").ok
    assert sb3.run("print(open('state.txt').read())").stdout == "42\n"
    assert sb3.run("import helper_mod", stdin=None).status == "error"
    sb3.write_files({"helper_mod.py": "VALUE = 7\n"})
    assert sb3.run("import helper_mod; print(helper_mod.VALUE)").stdout == "7\n"
    with _make(sb3.fork_server or ("oneshot" if sb3.isolated else False)) as fresh:
        assert fresh.run("import os; print(os.listdir('.'))").stdout == "[]\n"
    host_dir = sb3.workdir
    sb3.close()
    sb3.close()  # idempotent
    assert not os.path.exists(host_dir)
    with pytest.raises(SandboxError, match="closed"):
        sb3.run("print(1)")
    with pytest.raises(SandboxError, match="closed"):
        sb3.read_file("state.txt")


def test_write_files_read_file_round_trip(sb):
    sb.write_files({"data/in.txt": "héllo", "raw.bin": b"\x00\xff\x10"})
    code = "import os\ns = open('data/in.txt').read()\nopen('data/out.txt', 'w').write(s.upper())\nos.remove('data/in.txt')"
    r = sb.run(code)
    assert r.ok, r.stderr  # the program may also change and delete what we wrote
    assert sb.read_file("data/out.txt") == "HÉLLO"
    assert sb.read_bytes("raw.bin") == b"\x00\xff\x10"
    sb.run("open('bad.txt', 'wb').write(b'ok\\xff')")
    assert sb.read_file("bad.txt") == "ok\ufffd"
    with pytest.raises(FileNotFoundError):
        sb.read_file("data/in.txt")


def test_path_escapes_refused(sb, tmp_path):
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "file.txt"
    outside.write_text("original")
    for bad in ["../x", "/etc/passwd", "a/../../x", "", "./..", "data/../../../etc/passwd"]:
        with pytest.raises(SandboxError):
            sb.write_files({bad: "x"})
        with pytest.raises(SandboxError):
            sb.read_file(bad)
    # Links planted by sandboxed code; writes only ever aim at our own temporary files, in case the check broke.
    code = f"""
import os
os.symlink('/etc/passwd', 'passwd_link')
os.symlink({str(outside)!r}, 'outside_link')
os.symlink({str(outside_dir)!r}, 'outside_dir')
open('real.txt', 'w').write('inside')
os.symlink('real.txt', 'alias')
os.mkfifo('fifo')
"""
    assert sb.run(code).ok
    for planted in ["passwd_link", "outside_link", "outside_dir/file.txt"]:
        with pytest.raises(SandboxError, match="outside"):
            sb.read_file(planted)
    for planted in ["outside_link", "outside_dir/file.txt", "outside_dir/new.txt"]:
        with pytest.raises(SandboxError, match="outside"):
            sb.write_files({planted: "pwned"})
    assert outside.read_text() == "original" and sorted(os.listdir(outside_dir)) == ["file.txt"]
    assert sb.read_file("alias") == "inside"  # a symlink that stays inside is fine
    with pytest.raises(SandboxError, match="regular file"):
        sb.read_file("fifo")


# -- async ------------------------------------------------------------------------------------------
def test_arun_concurrent_runs_with_gather(sb):
    async def main():
        results = await asyncio.gather(
            *(sb.arun(barrier_program("gather", i, 4), timeout=30) for i in range(4))
        )
        nested = sb.run("print('from a running loop')")  # run() must work while a loop is running
        return results, nested

    results, nested = asyncio.run(main())
    # In flight together: each saw all four check in (in sequence, the first would have waited alone).
    assert [r.stdout for r in results] == [f"{i} True\n" for i in range(4)], results
    assert all(r.ok for r in results)
    assert nested.stdout == "from a running loop\n"


def test_cancelled_arun_kills_its_program(sb3):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sb3.arun("import time; time.sleep(1); open('late.txt', 'w')"), 0.3)

    asyncio.run(main())
    time.sleep(1.2)
    assert not os.path.exists(os.path.join(sb3.workdir, "late.txt"))


def test_async_context_manager():
    async def main():
        async with _make(False) as sandbox:
            r = await sandbox.arun("echo hi", language="bash")
        return r, sandbox

    r, sandbox = asyncio.run(main())
    assert r.stdout == "hi\n"
    assert not os.path.exists(sandbox.workdir)


# -- fallback, errors, factory ----------------------------------------------------------------------
def test_unisolated_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(local_mod, "_warned_unisolated", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = make_sandbox("local", use_bwrap=False)
        second = make_sandbox("local", use_bwrap=False)
    try:
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1 and "NOT isolated" in str(runtime[0].message)
        assert first.limits_enforced["filesystem"] == "none" and first.limits_enforced["network"] == "none"
        assert first.run("print(2 + 2)").stdout == "4\n"
        assert second.run("import os; print(os.getcwd())").stdout == f"{second.workdir}\n"
    finally:
        first.close()
        second.close()


@needs_bwrap
def test_sandbox_error_when_bwrap_cannot_start(bsb):
    from aligngym.sandboxes.workdir import remove_tree

    remove_tree(bsb.workdir)  # unmounts its tmpfs first, where it has one
    assert not os.path.exists(bsb.workdir)
    r = bsb.run("print(1)")
    assert r.status == "sandbox_error" and r.exit_code is None
    assert "bwrap" in r.stderr


def test_make_sandbox_backends_and_config():
    with pytest.raises(ValueError, match="local"):
        make_sandbox("nope")
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxConfig(memory_mb=0)
    assert all(f.metadata.get("help") for f in dataclasses.fields(SandboxConfig))
    defaults = SandboxConfig()
    assert (defaults.timeout, defaults.memory_mb, defaults.pids, defaults.network) == (10.0, 512, 64, False)
    assert (defaults.max_output_bytes, defaults.max_file_mb) == (1 << 20, 64)
    with _make(False, timeout=3, config=SandboxConfig(pids=9)) as sandbox:
        assert (sandbox.config.timeout, sandbox.config.pids) == (3, 9)


@pytest.fixture
def fake_cgroup(monkeypatch, tmp_path):
    """A fake cgroup v2 tree holding this process's cgroup; yields that cgroup's directory."""
    own = next(
        line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
    )
    base = tmp_path / own.strip().lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("memory pids\n")
    monkeypatch.setattr(limits_mod, "CGROUP_ROOT", str(tmp_path))
    limits_mod.cgroup_v2_parent.cache_clear()
    limits_mod.cgroup_v1_parents.cache_clear()
    try:
        yield base
    finally:
        limits_mod.cgroup_v2_parent.cache_clear()
        limits_mod.cgroup_v1_parents.cache_clear()


def test_cgroup_v2_plumbing_with_a_fake_tree(fake_cgroup):
    base = fake_cgroup
    assert limits_mod.cgroup_parent() == str(base)
    assert "+cpu" in (base / "cgroup.subtree_control").read_text()  # the missing controller was enabled
    with _make(False, memory_mb=100, pids=7, cpus=0.5) as sandbox:
        assert sandbox.limits_enforced["memory"] == sandbox.limits_enforced["pids"] == "cgroup"
        r = sandbox.run("import os; print(os.getpid())")
    assert r.ok, r.stderr
    (run_dir,) = [p for p in base.iterdir() if p.name.startswith("aligngym-")]
    assert (run_dir / "memory.max").read_text() == str(100 << 20)
    assert (run_dir / "pids.max").read_text() == "7"
    assert (run_dir / "cpu.max").read_text() == "50000 100000"
    assert (run_dir / "cgroup.procs").read_text().strip().isdigit()  # the wrapper moved itself in


@needs_bwrap
def test_fork_server_sandbox_cgroup_with_a_fake_tree(fake_cgroup):
    with _make(True, memory_mb=100, pids=7, cpus=0.5) as sandbox:
        assert sandbox.limits_enforced["memory"] == "cgroup"  # no RLIMIT_AS: it caps threads (issue 12)
        assert sandbox.limits_enforced["cpus"] == "cgroup"
        assert sandbox.run("print(1)").ok and sandbox.run("print(2)").ok
        # one cgroup for the whole sandbox (server and runs), with room for the server next to a run
        (sandbox_dir,) = [p for p in fake_cgroup.iterdir() if p.name.startswith("aligngym-")]
        assert (sandbox_dir / "memory.max").read_text() == str(164 << 20)
        assert (sandbox_dir / "pids.max").read_text() == "15"
        assert (sandbox_dir / "cgroup.procs").read_text().strip().isdigit()


# -- the fork server --------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    return children


def _sandbox_processes(sandbox: LocalSandbox) -> list[str]:
    """Command lines of every process under the sandbox's bwrap (bwrap's own included)."""
    assert sandbox._server is not None and sandbox._server.pid is not None
    children, found, todo = _children_map(), [], [sandbox._server.pid]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        todo += children.get(pid, [])
    return found


def _server_python_pid(sandbox: LocalSandbox) -> int:
    assert sandbox._server is not None and sandbox._server.pid is not None
    children, todo = _children_map(), [sandbox._server.pid]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv[0] != b"" and b"bwrap" not in argv[0] and argv[1:2] == [b"/.aligngym/forkserver.py"]:
            return pid
        todo += children.get(pid, [])
    raise AssertionError("no fork server process found")


@needs_bwrap
def test_each_run_is_a_fresh_unprivileged_process_in_its_own_namespaces(bsb):
    code = """
import os
tmp = sorted(set(os.listdir("/tmp")) - set(TMP_INTERPRETER))
print(os.getpid(), os.getppid(), os.getuid(), os.getcwd(), sorted(os.listdir("/.aligngym")), tmp)
caps = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines() if line.startswith("Cap"))
print(sorted({v.strip() for v in caps.values()}))
open("/tmp/mine", "w").write("x")
"""
    code = f"TMP_INTERPRETER = {interpreter_tmp_entries()!r}\n" + code
    first, second = bsb.run(code), bsb.run(code)
    assert first.ok and second.ok, first.stderr
    # pid 2 under a pid-1 reaper of its own; the server's file is hidden; /tmp is fresh; no capability left
    assert first.stdout == second.stdout == "2 1 65534 /sandbox ['main.py'] []\n['0000000000000000']\n"
    assert bsb.server_starts == 1 and bsb.limits_enforced["memory"] in ("cgroup", "rlimit_as")


@needs_bwrap
def test_python_state_does_not_leak_between_runs(bsb):
    first = bsb.run(
        "import builtins, json, os, random, sys\n"
        "builtins.LEAK = 1; LEAK_GLOBAL = 2; json.dumps = lambda *a: 'patched'\n"
        "sys.modules['planted'] = json; os.environ['PLANTED'] = '1'; sys.path.insert(0, '/nowhere')\n"
        "print(random.random())"
    )
    assert first.ok, first.stderr
    second = bsb.run(
        "import builtins, json, os, random, sys\n"
        "print(hasattr(builtins, 'LEAK'), 'LEAK_GLOBAL' in globals(), json.dumps([1]), 'planted' in sys.modules,\n"
        "      'PLANTED' in os.environ, '/nowhere' in sys.path, __name__, __file__, sys.argv)\n"
        "print(random.random())"
    )
    lines = second.stdout.splitlines()
    assert lines[0] == "False False [1] False False False __main__ /.aligngym/main.py ['/.aligngym/main.py']"
    assert lines[1] != first.stdout.strip()  # every run gets a freshly seeded random


@needs_bwrap
def test_program_semantics_match_one_shot_runs(bsb):
    programs = [
        "import sys; sys.exit(3)",
        "import sys; sys.exit('bye')",
        "raise SystemExit",
        "def f():\n    raise ValueError('deep')\nf()",
        "x = (",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "import inspect\ndef f():\n    return 1\nprint(inspect.getsource(f), end='')",
        "import atexit, threading, time\natexit.register(print, 'atexit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.1), print('thread'))).start()",
        "class A:\n    def __del__(self):\n        print('del')\na = A()\nf = open('unclosed.txt', 'w')\nf.write('kept')",
        "print(open('unclosed.txt').read()); import sys; print(sys.stdin.read(), sys.stdin.isatty())",
        "import sys; print(sys.stdout.encoding, sys.stdout.errors, sys.stderr.errors, sys.stdin.errors)",
        "print('\\u00e9', end=''); import sys; sys.stdout.write('x' * 70000)",
        "echo $0 $#; read line; echo got $line; kill -TERM $$",
        "import sys, os; os.makedirs(os.path.expanduser('~/.local/lib/python%d.%d/site-packages' % sys.version_info[:2]),"
        " exist_ok=True)",
        "import sys, __main__; print([p for p in sys.path if 'site-packages' in p or p.startswith('/s')],"
        " type(__main__.__loader__).__name__, __spec__)",
    ]
    with _make("oneshot") as oneshot:
        for code in programs:
            language = "bash" if code.startswith("echo") else "python"
            got, want = bsb.run(code, language, stdin="in"), oneshot.run(code, language, stdin="in")
            assert (got.status, got.exit_code, got.stdout, got.stderr) == (
                want.status,
                want.exit_code,
                want.stdout,
                want.stderr,
            ), code


@needs_bwrap
def test_a_setsid_daemon_dies_when_its_run_ends(bsb):
    marker = f"agym-daemon-{uuid.uuid4().hex}"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 100)  # a real daemon: it holds none of the run's pipes
        os.execv("/bin/sh", ["/bin/sh", "-c", "trap '' TERM HUP; sleep 30", "{marker}"])
    os._exit(0)
def cmdline(pid):
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # it exited while we looked (the intermediate child does)
        return b""
while not any(b"{marker}" in cmdline(p) for p in os.listdir("/proc") if p.isdigit()):
    time.sleep(0.01)
print("started")
"""
    r = bsb.run(code)
    assert (r.status, r.stdout) == ("ok", "started\n"), r.stderr
    assert pids_with(marker) == []
    # nothing of the sandbox is left but bwrap and the server
    left = _sandbox_processes(bsb)
    assert len(left) == 3 and all("forkserver.py" in cmd for cmd in left), left


@needs_bwrap
def test_server_killed_from_the_host_is_restarted(bsb):
    assert bsb.run("print(1)").ok
    results = []
    code = "import time; open('started', 'w').close(); time.sleep(20)"
    runner = threading.Thread(target=lambda: results.append(bsb.run(code, timeout=30)))
    runner.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(bsb.workdir, "started")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(_server_python_pid(bsb), signal.SIGKILL)
    runner.join(10)
    # the run in flight reports the crash; the next run starts a fresh server and succeeds
    assert [r.status for r in results] == ["sandbox_error"] and "server stopped" in results[0].stderr
    assert bsb.run("print(2)").stdout == "2\n" and bsb.server_starts == 2
    os.kill(_server_python_pid(bsb), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while bsb._server is not None and bsb._server.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bsb.run("print(3)").stdout == "3\n" and bsb.server_starts == 3  # a death noticed before a run


@needs_bwrap
def test_stdin_delivered_whole_or_empty(bsb):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    r = bsb.run("import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())", stdin=data)
    assert r.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert bsb.run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"
    assert bsb.run("cat; echo", language="bash", stdin="hello").stdout == "hello\n"


@needs_bwrap
def test_concurrent_runs_on_one_sandbox_are_parallel_and_independent(bsb):
    async def main():
        code = "import os\nprint(os.getpid())\n"
        slow = [bsb.arun(code + barrier_program("parallel", i, 6), timeout=30) for i in range(6)]
        stuck = bsb.arun("while True: pass", timeout=0.3)
        return await asyncio.gather(stuck, *slow)

    stuck, *slow = asyncio.run(main())
    assert stuck.status == "timeout"
    # pid 2 each (a namespace of its own), and all six in flight together (each saw all six check in)
    assert [r.stdout for r in slow] == [f"2\n{i} True\n" for i in range(6)], slow


@needs_bwrap
def test_unsupported_fork_server_falls_back_to_one_shot(monkeypatch):
    def refuse(self, timeout):
        raise forkserver_mod.ServerUnsupported("no user namespaces here")

    monkeypatch.setattr(forkserver_mod.ForkServer, "start", refuse)
    monkeypatch.setattr(local_mod, "_fork_server_unsupported", None)
    sandbox = make_sandbox("local", use_bwrap=True, timeout=5)
    try:
        with pytest.warns(RuntimeWarning, match="fresh bwrap"):
            r = sandbox.run("print(1)")
        pids = "cgroup" if limits_mod.cgroup_parent() else "rlimit_nproc"
        assert r.ok and not sandbox.fork_server and sandbox.limits_enforced["pids"] == pids
        with make_sandbox("local", use_bwrap=True) as later:  # remembered for the rest of the process
            assert not later.fork_server
    finally:
        sandbox.close()


@needs_bwrap
def test_an_unreferenced_sandbox_closes_itself():
    sandbox = _make(True)
    assert sandbox.run("print(1)").ok  # its server (and the server's reader thread) is running
    bwrap_pid, workdir, live = sandbox._server.pid, sandbox.workdir, live_sandboxes()
    del sandbox  # no close(): reference counting alone must reclaim it
    assert live_sandboxes() == live - 1 and not os.path.exists(workdir)
    assert not os.path.exists(f"/proc/{bwrap_pid}")


@needs_bwrap
def test_working_directory_is_bounded_as_a_whole():
    with _make(True, memory_mb=64, max_file_mb=16) as sandbox:
        if sandbox.limits_enforced["workdir_size"] != "tmpfs":
            pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the directory is unbounded here")
        r = sandbox.run("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))")
        # ENOSPC in a tmpfs is memory (issue 12): everything a run can write is in RAM
        assert r.status == "memory" and "No space left on device" in r.stderr, r
        with pytest.raises(SandboxError, match="memory_mb"):
            sandbox.write_files({"more.bin": b"y" * (8 << 20)})
        sandbox.reset()  # emptied: room again
        sandbox.write_files({"more.bin": b"y" * (8 << 20)})
        assert len(sandbox.read_file("more.bin")) == 8 << 20


@needs_bwrap
@pytest.mark.parametrize("mode", [True, "oneshot"], ids=["fork-server", "oneshot"])
def test_runs_cannot_create_user_namespaces(mode):
    code = (
        "import ctypes, subprocess, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.unshare(0x10000000)  # CLONE_NEWUSER\n"
        "tool = subprocess.run(['unshare', '-r', 'true'], capture_output=True).returncode\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()  # plain clone still works\n"
        "print(rc, ctypes.get_errno(), tool)\n"
    )
    with _make(mode) as sandbox:
        r = sandbox.run(code)
    assert r.ok, r
    rc, err, tool = map(int, r.stdout.split())
    assert (rc, tool != 0) == (-1, True) and err in (1, 38), r.stdout  # EPERM (or ENOSYS via clone3)


@needs_bwrap
@pytest.mark.parametrize("mode", [True, "oneshot"], ids=["fork-server", "oneshot"])
def test_container_runtime_data_is_left_out_of_the_view(mode):
    # Docker's overlay mounts churn while containers come and go; binding them raced (EINVAL) in CI. The view
    # is an allow-list now, and /var (other services' data) is not on it.
    with _make(mode) as sandbox:
        r = sandbox.run("import os; print(os.path.exists('/var/lib/docker'), os.path.isdir('/var/lib/dpkg'))")
    assert r.ok, r
    assert r.stdout.split() == ["False", "False"]
