"""The fork server: a warm interpreter inside bubblewrap that forks one pristine copy of itself per run.

Started as a script (stdlib only; the host imports nothing but ``user_namespace_filter``):
``python forkserver.py CTL_FD CONFIG_JSON``. CTL_FD is a SOCK_SEQPACKET socket to the host. Messages are
one byte of kind plus JSON:

* host -> server ``R`` starts a run; it carries, as SCM_RIGHTS, the code (a sealed memfd), the stdout and
  stderr pipes, and the stdin memfd when there is one. ``K`` kills a run.
* server -> host ``H`` (hello, once: whether per-run namespaces work) and ``X`` (a run ended; all of its
  processes are gone).

Per run the server clones I straight into a new user, pid, mount and IPC namespace (I is pid 1 there; a
fork costs ~1 ms on a small VM, so no intermediate process unshares first); I maps its ids, mounts a fresh
/tmp, /dev/shm and a read-only /.aligngym holding the program file, and forks P, which drops every
capability, sets the run's rlimits and runs the code; I exits with P's status. The kernel kills everything
left in a pid namespace when its pid 1 exits and lets I's parent (the server) reap I only after they are
all gone, so ``X`` means the whole tree is dead.

Unlike fresh interpreters, the runs of one server share its hash seed (str hashes, set order), a preloaded
stdlib module wins over a same-named file in the working directory, and at exit only the program's own
``__main__`` objects are released, not every module (see ``_finish``). An isolated run (its job's
``"isolated"``: the runner flags and the whole environment, from ``sandboxes.base.isolated_request``) gets
what ``python -I`` would give it (see ``_isolate_sys_path``) except ``sys.flags``, which a forked
interpreter cannot change.
"""

import atexit
import builtins
import ctypes
import gc
import hashlib
import importlib
import importlib.machinery
import io
import json
import os
import resource
import selectors
import signal
import site
import socket
import stat
import sys
import threading
import types
from typing import Any, NamedTuple, NoReturn

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 24, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CODE_DIR = "/.aligngym"
SANDBOX_DIR = "/sandbox"
FRESH_DIRS = ("/tmp", "/dev/shm")  # mounted anew for every run
#: Never on an isolated run's sys.path: the working directory and the program's own directory (besides
#: whatever the run can write, such as /tmp; a venv bound there read-only stays).
NEVER_ON_PATH = (SANDBOX_DIR, CODE_DIR)
PROGRAM = {"python": CODE_DIR + "/main.py", "bash": CODE_DIR + "/main.sh"}
# Imported once here so runs start with them warm; the standard library only, never the working directory.
PRELOAD = (
    "abc", "argparse", "ast", "base64", "bisect", "collections", "contextlib", "copy", "dataclasses",
    "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "inspect", "itertools",
    "json", "math", "operator", "pathlib", "random", "re", "string", "struct", "textwrap", "time",
    "traceback", "typing",
)  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)  # else the probe fails: one-shot runs
Job = dict[str, Any]  # a run request: id, language, rlimits, whether stdin is given, isolated (or None)


class Prelude(NamedTuple):
    """What running a trusted prelude in the server left: its text, its globals, the modules it added."""

    source: bytes
    scope: dict[str, Any]
    modules: list[str]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    args = (source.encode(), target.encode(), fstype.encode() if fstype else None)
    _check(_libc.mount(*args, ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _private_mounts(size: int, keep: list[str], code: bytes, program: str) -> None:
    """A run's fresh /tmp and /dev/shm, and a read-only ``CODE_DIR`` holding only ``program`` (``code``).

    One tmpfs backs all three, so ``size`` bounds /tmp and /dev/shm together: it is charged to the sandbox's
    memory cgroup, and tmpfs pages are no process's, so the OOM killer would take an innocent run instead.
    Staged in subdirectories of that tmpfs mounted at ``CODE_DIR`` (hiding the server's own file), each
    bound at its place; the code's directory is bound over ``CODE_DIR`` last and made read-only, so the
    staging root is never unmounted (an unmount waits for an RCU grace period: a millisecond per run).
    Host paths bound under /tmp (``keep``: a venv, say) are opened before the new tmpfs hides them and
    bound back from the descriptor (read-only flags come along).
    """
    held = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in keep]
    try:
        _mount("tmpfs", CODE_DIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size + len(code) + 65536},mode=0755")
        for target in FRESH_DIRS:
            staged = os.path.join(CODE_DIR, target.strip("/").replace("/", "_"))
            os.mkdir(staged)
            os.chmod(staged, 0o1777)
            _mount(staged, target, None, MS_BIND, None)
        staged = os.path.join(CODE_DIR, "code")
        os.mkdir(staged, 0o755)
        with open(os.path.join(staged, os.path.basename(program)), "wb") as f:
            f.write(code)
        _mount(staged, CODE_DIR, None, MS_BIND, None)
        _mount("none", CODE_DIR, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        for path, fd in held:
            parent = os.path.dirname(path)
            os.makedirs(parent, 0o755, exist_ok=True)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
    finally:
        for _, fd in held:
            os.close(fd)


def _volunteer_for_oom() -> None:
    """Make the program the OOM killer's first choice, before the server (-1000) and the run's init."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # raising one's own score is always allowed; a /proc without it leaves the default


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _drop_capabilities(last_cap: int) -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets (P is root of its userns)."""
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")


class Server:
    """The control loop: spawn runs, kill them on request, report their ends."""

    def __init__(self, ctl_fd: int, config: dict[str, Any]):
        self.ctl = socket.socket(fileno=ctl_fd)
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.runs = {}  # run id -> (pid of the run's init, pidfd)
        self.preludes: dict[str, Prelude | None] = {}  # digest -> what running it left (None: it failed)
        self.last_cap = _last_cap()  # read once: every run drops capabilities 0..last_cap

    def send(self, kind: bytes, body: dict[str, Any]) -> None:
        self.ctl.send(kind + json.dumps(body).encode())

    def start(self) -> Job | None:
        """Prepare, probe and serve; returns the job only in a forked program, None when the host is gone."""
        os.chdir("/")
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # a run's init is reparented here when C exits
        _prctl(PR_SET_DUMPABLE, 0)  # runs share our uid: no ptrace or /proc/PID/mem into the server
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        gc.collect()
        gc.freeze()  # forked runs then share these pages instead of touching them in every collection
        outcome = self.probe()
        if isinstance(outcome, dict):
            return outcome  # this is the probe's own (empty) program
        if outcome != "ok":
            self.send(b"H", {"ok": False, "error": outcome})
            return None
        self.send(b"H", {"ok": True, "pid": os.getpid()})
        self.selector.register(self.ctl, selectors.EVENT_READ)
        return self.serve()

    def probe(self) -> Job | str:
        """Run an empty program through the real path: "ok", why that failed, or (in the probe) its job."""
        code = os.memfd_create("probe")
        null = os.open(os.devnull, os.O_WRONLY)
        err_r, err_w = os.pipe()
        job = {"id": 0, "language": "python", "rlimits": {}, "stdin": False}
        spawned = self.spawn(job, [code, null, err_w])
        if spawned[0] == "job":
            return spawned[1]  # this is the probe program itself
        if spawned[0] == "error":
            os.close(err_r)
            return spawned[1]
        _, status = os.waitpid(spawned[1], 0)
        os.set_blocking(err_r, False)
        try:
            stderr = os.read(err_r, 4096).decode(errors="replace")
        except BlockingIOError:
            stderr = ""
        os.close(err_r)
        return "ok" if status == 0 else f"probe run failed ({status}): {stderr}"

    def serve(self) -> Job:
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.ctl:
                    job = self.on_message()
                    if job is not None:
                        return job
                else:
                    self.reap(key.fd)

    def on_message(self) -> Job | None:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, 1 << 16, 8)
        except OSError:
            data, fds = b"", []
        if not data:  # the host closed the sandbox: take every run with us
            for pid, _ in self.runs.values():
                os.kill(pid, signal.SIGKILL)
            os._exit(0)
        kind, body = data[:1], json.loads(data[1:])
        if kind == b"P":
            self.preload(body["digest"], fds)
            return None
        if kind == b"K":
            run = self.runs.get(body["id"])
            if run is not None:
                os.kill(run[0], signal.SIGKILL)  # pid 1 of the run's namespace: the kernel takes the rest
            return None
        spawned = self.spawn(body, fds)
        if spawned[0] == "job":
            return spawned[1]
        if spawned[0] == "error":
            self.send(b"X", {"id": body["id"], "error": spawned[1]})
            return None
        pidfd = os.pidfd_open(spawned[1])
        self.runs[body["id"]] = (spawned[1], pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, body["id"])
        return None

    def reap(self, pidfd: int) -> None:
        run_id = self.selector.get_key(pidfd).data
        self.selector.unregister(pidfd)
        pid, _ = self.runs.pop(run_id)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.send(b"X", {"id": run_id, "code": code if code >= 0 else 128 - code})

    def preload(self, digest: str, fds: list[int]) -> None:
        """Run a prelude the host vouches for (``forkserver.trust_prelude``) here, once, for runs to fork from."""
        try:
            source = _read_all(fds[0])
        finally:
            for fd in fds:
                os.close(fd)
        if digest in self.preludes:
            return
        self.preludes[digest] = None
        if hashlib.sha256(source).hexdigest() != digest:
            return
        known, path = set(sys.modules), list(sys.path)
        sys.path[:] = _isolated_path()  # what the isolated runs it is for would import from
        scope = {"__name__": "__main__", "__file__": PROGRAM["python"], "__builtins__": builtins}
        try:
            exec(compile(source, PROGRAM["python"], "exec", dont_inherit=True), scope)
        except BaseException:
            for name in set(sys.modules) - known:
                del sys.modules[name]
            return  # its runs execute their whole program instead
        finally:
            sys.path[:] = path
        self.preludes[digest] = Prelude(source, scope, sorted(set(sys.modules) - known))
        gc.collect()
        gc.freeze()

    # -- one run ----------------------------------------------------------------------------------------
    def spawn(self, job: Job, fds: list[int]) -> tuple[str, Any]:
        """("pid", init pid) or ("error", text) in the server; ("job", job) in the run's program."""
        r, w = os.pipe()
        uid, gid = os.getuid(), os.getgid()
        flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | signal.SIGCHLD
        # A raw clone (the child continues on a copy of our stack, like fork): safe here because the server
        # is single-threaded; P is then forked with os.fork, which redoes Python's after-fork work.
        pid = _libc.syscall(_SYS_CLONE, ctypes.c_ulong(flags), 0, 0, 0, 0) if _SYS_CLONE else -1
        if pid < 0:
            err = ctypes.get_errno()
            for fd in (*fds, r, w):
                os.close(fd)
            return ("error", f"clone failed: {os.strerror(err)}")
        if pid == 0:
            try:
                os.close(r)
                return ("job", self.enter_namespaces(job, fds, w, uid, gid))
            except BaseException as exc:
                try:
                    os.write(w, b"E" + f"run setup failed: {type(exc).__name__}: {exc}".encode())
                finally:
                    os._exit(127)
        os.close(w)
        for fd in fds:
            os.close(fd)
        report = os.read(r, 4096)
        os.close(r)
        if report[:1] == b"P":
            return ("pid", pid)
        os.waitpid(pid, 0)
        return ("error", report[1:].decode(errors="replace") or "run setup died")

    def enter_namespaces(self, job: Job, fds: list[int], report_fd: int, uid: int, gid: int) -> Job:
        """In I (pid 1 of fresh namespaces): map our ids, private mounts, fork the program, report, then reap
        whatever reaches us and exit with the program's status."""
        _prctl(PR_SET_DUMPABLE, 1)  # /proc/self of a non-dumpable process belongs to root: no map writes
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        _prctl(PR_SET_DUMPABLE, 0)  # the run's init, forked below, must not be ptraced by the program
        code = _read_all(fds[0])
        _private_mounts(self.config["tmp_bytes"], self.config.get("keep", ()), code, PROGRAM[job["language"]])
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 then ignores every signal its namespace sends
        program = os.fork()
        if program == 0:
            os.close(report_fd)
            return self.be_program(job, fds)
        os.write(report_fd, b"P")
        os.close(report_fd)
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == program:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)

    def be_program(self, job: Job, fds: list[int]) -> Job:
        """In P: a new session, no capabilities, the run's stdio, directory, environment and rlimits."""
        try:
            self.selector.close()
            self.ctl.close()
            os.setsid()
            _prctl(PR_SET_DUMPABLE, 1)
            _volunteer_for_oom()
            _drop_capabilities(self.last_cap)
            _deny_user_namespaces()
            stdin = fds[3] if job["stdin"] else os.open(os.devnull, os.O_RDONLY)
            for target, fd in enumerate((stdin, fds[1], fds[2])):
                os.dup2(fd, target)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.chdir(SANDBOX_DIR)
            os.environ.clear()
            isolated = job.get("isolated")
            os.environ.update(isolated["env"] if isolated else self.config["env"])
            for name, value in job["rlimits"].items():
                which = getattr(resource, "RLIMIT_" + name.upper())
                hard = resource.getrlimit(which)[1]
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (value, value))
            if job["language"] == "bash":
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # what a shell started by subprocess would get
                bash = self.config["bash"]
                flags = isolated["flags"] if isolated else ()
                os.execve(bash, [bash, *flags, PROGRAM["bash"]], os.environ)
            return job
        except BaseException as exc:
            try:
                os.write(
                    2,
                    f"aligngym fork server: the program could not start: {type(exc).__name__}: {exc}\n".encode(),
                )
            finally:
                os._exit(127)


# seccomp: a run may not create user namespaces (the kernel attack surface docker's profile closes too).
# clone3 passes its flags in memory a filter cannot read, so it gets ENOSYS and libc falls back to clone.
_SECCOMP_SYSCALLS = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}


def user_namespace_filter() -> tuple[int, bytes] | None:
    """The seccomp (cBPF) program refusing unshare/clone with CLONE_NEWUSER (EPERM) and clone3 (ENOSYS), as
    (instruction count, bytes); None on an architecture we have no syscall numbers for. The host reads it
    too, for one-shot runs (bwrap --seccomp): the one thing it imports from this script."""
    import struct

    known = _SECCOMP_SYSCALLS.get(os.uname().machine)
    if known is None:
        return None
    arch, nr_unshare, nr_clone, nr_clone3 = known
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, errno_ret = 0x7FFF0000, 0x00050000
    program = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 4, arch),  # another ABI: allow
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jeq, 7, 0, nr_clone3),
        (jeq, 2, 0, nr_unshare),
        (jeq, 1, 0, nr_clone),
        (ret, 0, 0, allow),
        (ld, 0, 0, 16),  # low 32 bits of args[0]: the clone/unshare flags
        (jset, 1, 0, 0x10000000),  # CLONE_NEWUSER
        (ret, 0, 0, allow),
        (ret, 0, 0, errno_ret | 1),  # EPERM
        (ret, 0, 0, errno_ret | 38),  # ENOSYS
    ]
    return len(program), b"".join(struct.pack("HBBI", *ins) for ins in program)


def _deny_user_namespaces() -> None:
    """Install ``user_namespace_filter`` on this process (and so on everything it starts)."""
    compiled = _USERNS_FILTER
    if compiled is None:
        return  # keeps the namespace-only isolation
    count, blob = compiled
    filters = ctypes.create_string_buffer(blob)

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(count, ctypes.cast(filters, ctypes.c_void_p))
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: required to install a filter without privileges
    _check(_libc.prctl(22, 2, ctypes.byref(prog), 0, 0), "seccomp filter")  # PR_SET_SECCOMP, FILTER


# Compiled once in the server, so a run only pays for the prctl (building it per run cost ~3 ms).
_USERNS_FILTER = user_namespace_filter()


def _stdio(fd: int, like: io.TextIOWrapper, write: bool) -> io.TextIOWrapper:
    """A fresh ``sys.std*`` for ``fd``, built the way interpreter startup built ``like``."""
    raw = io.FileIO(fd, "wb" if write else "rb", closefd=False)
    raw.name = like.buffer.raw.name if isinstance(like.buffer, io.BufferedIOBase) else like.buffer.name
    if write and isinstance(like.buffer, io.FileIO):
        buf = raw  # unbuffered (PYTHONUNBUFFERED)
    else:
        buf = io.BufferedWriter(raw) if write else io.BufferedReader(raw)
    text = io.TextIOWrapper(
        buf,
        encoding=like.encoding,
        errors=like.errors,
        newline="\n",
        line_buffering=like.line_buffering,
        write_through=like.write_through,
    )
    text.mode = "w" if write else "r"
    return text


def _exit_status(exc: SystemExit) -> int:
    """The exit status CPython gives an uncaught ``SystemExit``, printing a non-integer code like it does."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _flush_std(status: int) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = 120  # what CPython exits with when it cannot flush stdout/stderr at exit
    return status


def _finish(status: int, main: types.ModuleType) -> NoReturn:
    """Exit like the interpreter does, minus module teardown (in a forked child it copies every page)."""
    # Py_FinalizeEx's order: non-daemon threads, atexit, flush; then the program's own objects go (their
    # destructors run, their files flush). Only objects held solely by other modules' globals are not freed.
    try:
        threading._shutdown()
    except BaseException:
        pass
    atexit._run_exitfuncs()
    status = _flush_std(status)
    main.__dict__.clear()
    gc.collect()
    os._exit(_flush_std(status))


def _add_user_site() -> None:
    """The user site directory (under the run's HOME) where startup would have put it, if it exists."""
    if not site.ENABLE_USER_SITE:
        return
    site.USER_BASE = site.USER_SITE = None  # computed at server start, with the server's HOME
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site):
        system = set(site.getsitepackages())
        index = next((i for i, p in enumerate(sys.path) if p in system), len(sys.path))
        known = len(sys.path)
        site.addsitedir(user_site)  # appends it (and what its .pth files add): move them before the system's
        added = sys.path[known:]
        del sys.path[known:]
        sys.path[index:index] = added


def _untrusted_path(path: str) -> bool:
    """Whether ``path`` is the working or program directory, or this run could create or change it."""
    path = os.path.abspath(path)
    if any(path == d or path.startswith(d + "/") for d in NEVER_ON_PATH):
        return True
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def _isolated_path() -> list[str]:
    """``sys.path`` as ``python -I`` has it: no program directory, nothing a run can write."""
    # The server script's directory (CODE_DIR) stands where the program's would; it goes with the rest.
    return [p for p in sys.path if p and not _untrusted_path(p)]


def _isolate_sys_path() -> None:
    """``sys.path`` as ``python -I`` has it, and no user site."""
    site.ENABLE_USER_SITE = False
    kept = _isolated_path()
    for gone in set(sys.path) - set(kept):
        sys.path_importer_cache.pop(gone, None)
    sys.path[:] = kept


def _start_from(preludes: dict[str, Prelude | None], digest: str | None, source: bytes) -> Prelude | None:
    """The prelude this run starts from (``source`` begins with it); the modules of every other one go."""
    chosen = preludes.get(digest) if digest is not None else None
    if chosen is not None and not source.startswith(chosen.source):
        chosen = None
    for prelude in preludes.values():
        if prelude is not None and prelude is not chosen:
            for name in prelude.modules:
                sys.modules.pop(name, None)
    return chosen


def run_python(config: dict[str, Any], job: Job, preludes: dict[str, Prelude | None]) -> NoReturn:
    """In P: run the program file as ``__main__`` the way ``python main.py`` would, then exit."""
    path = PROGRAM["python"]
    with open(path, "rb") as f:
        source = f.read()
    prelude = _start_from(preludes, job.get("prelude") if job.get("isolated") else None, source)
    sys.stdin = sys.__stdin__ = _stdio(0, sys.__stdin__, False)
    sys.stdout = sys.__stdout__ = _stdio(1, sys.__stdout__, True)
    sys.stderr = sys.__stderr__ = _stdio(2, sys.__stderr__, True)
    flags: list[str] = []
    if job.get("isolated"):
        _isolate_sys_path()
        flags = job["isolated"]["flags"]  # only for sys.orig_argv: a forked interpreter keeps its sys.flags
    else:
        pythonpath = [p for p in config["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[1:1] = pythonpath  # where PYTHONPATH goes; the server itself never searched the working dir
        _add_user_site()
    sys.argv[:] = [path]
    sys.orig_argv[:] = [sys.executable, *flags, path]
    importlib.invalidate_caches()
    main = types.ModuleType("__main__")
    if prelude is not None:  # its globals, then the rest of the program on the lines it has in the file
        main.__dict__.update((k, v) for k, v in prelude.scope.items() if not k.startswith("__"))
        source = b"\n" * prelude.source.count(b"\n") + source[len(prelude.source) :]
    main.__file__, main.__cached__, main.__builtins__ = path, None, builtins
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    status = 0
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # our own frame is not the program's
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1  # 130: as a SIGINT death is reported
        del exc, tb
    _finish(status, main)


def main() -> None:
    config = json.loads(sys.argv[2])
    ctl_fd = int(sys.argv[1])
    # Nothing else the host or bwrap left open (the user-namespace fd, for one) may reach a run.
    os.closerange(3, ctl_fd)
    os.closerange(ctl_fd + 1, os.sysconf("SC_OPEN_MAX"))
    server = Server(ctl_fd, config)
    job = server.start()
    if job is not None:
        run_python(config, job, server.preludes)


if __name__ == "__main__":
    main()
