"""The docker sandbox's in-container executor: runs programs on request, speaking length-prefixed JSON on stdio.

Started as the container's pid 1 by ``python3 -I -S -c <this file>``; stdlib only, Python >= 3.8, so it
runs in any image with a ``python3``. Requests and replies are a 4-byte big-endian length and a JSON object,
then, when the object has a ``size``, that many raw bytes (a file chunk, a run's stdin).
"""

import array
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import time

# The fork server's source (docker_zygote.py): the host puts ``ZYGOTE_SOURCE = ...`` before this file in the
# -c argument. Without it (or when it cannot start) every run is spawned.
ZYGOTE_SOURCE = globals().get("ZYGOTE_SOURCE")
ZYGOTE_TIMEOUT_S = 5.0  # for the fork server's start and for each fork; past it the run is spawned
ZYGOTE_STARTS = 32  # fork servers one container may start (a program that keeps killing them gets none)
EARLY_EXITS = 256  # exit statuses kept for pids not yet known (a forked run may end before its pid arrives)

ROOT = "/sandbox"
LANE = "/run/aligngym/lane.sock"  # the host's unix socket, when it bind-mounts one (docker_channel.Lane)
CODE_PREFIX = "/tmp/.aligngym-code-"
CHUNK = 65536
CHUNK_MAX = 4 << 20  # most bytes one read reply carries
READ_BUFFER = 256 << 10  # the channel reads ahead up to twice this (fewer pauses than the 64 KiB default)
GRACE_S = 1.0
SUFFIX = {"python": ".py", "bash": ".sh"}
RUNNER = {"python": "python3", "bash": "bash"}
# ENOSPC too: all a run can write (/sandbox, /tmp) is tmpfs, charged to the container's memory.
MEMORY_MARKERS = (
    b"memoryerror",
    b"cannot allocate memory",
    b"out of memory",
    b"bad_alloc",
    b"no space left on device",
)
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
# Every place a run can write (the root is read-only): a reset empties each. /dev/mqueue: POSIX queues.
WRITABLE = (ROOT, "/tmp", "/dev/shm", "/dev/mqueue")
TMPFS = (ROOT, "/tmp", "/dev/shm")  # their usage must be back to zero after a reset
SYSV_IPC = ("shm", "sem", "msg")  # System V objects outlive their processes: a reset removes them
IPC_RMID = 0
# Used where util-linux's prlimit is missing: applies "NAME=VALUE,..." and execs the rest of argv.
RLIMIT_SHIM = (
    "import os,resource,sys\n"
    "for item in filter(None, sys.argv[1].split(',')):\n"
    "    name, value = item.split('=')\n"
    "    resource.setrlimit(getattr(resource, 'RLIMIT_' + name.upper()), (int(value), int(value)))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Refused(Exception):
    """A file request the sandbox refuses; ``kind`` tells the host which exception to raise."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def make_undumpable():
    """PR_SET_DUMPABLE 0: programs (same uid) can then neither ptrace us nor open /proc/1/fd (our channel)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0
    except Exception:
        return False


def oom_kills():
    """The container cgroup's OOM-kill counter (cgroup v2 or v1), None where it cannot be read."""
    for path in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def resolve(path):
    """The absolute path of ``path`` after refusing absolute paths, '..' and symlinks leading out of ROOT."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise Refused("invalid", f"invalid sandbox path {path!r}")
    if path.startswith("/") or ".." in path.split("/"):
        raise Refused(
            "escape", f"{path!r} escapes the sandbox: paths are relative to the working directory, no '..'"
        )
    full = os.path.realpath(os.path.join(ROOT, path))
    if not full.startswith(ROOT + "/"):
        raise Refused("escape", f"{path!r} resolves outside the sandbox working directory (a symlink?)")
    return full


def write_chunk(path, offset, data, max_bytes):
    """Write one chunk of a file at ``offset`` (0 starts the file afresh); files come in chunks, so a big
    transfer never holds more than one chunk in this process (its memory is the container's)."""
    if offset < 0 or offset + len(data) > max_bytes:
        raise Refused("too_large", f"{path!r} is over the {max_bytes}-byte file limit")
    full = resolve(path)
    os.makedirs(os.path.dirname(full), 0o755, exist_ok=True)
    # O_NOFOLLOW: a symlink swapped in after the check is refused; O_NONBLOCK: a planted FIFO cannot hang us.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(full, flags | (os.O_TRUNC if offset == 0 else 0), 0o644)
    try:
        if not _is_regular(fd):
            raise Refused("not_regular", f"{path!r} is not a regular file")
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)
    return {}


def read_chunk(path, offset, length, max_bytes):
    """Up to ``length`` bytes of a file from ``offset``, with the file's size (refused past ``max_bytes``)."""
    full = resolve(path)
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused("not_regular", f"{path!r} is not a regular file")
        if info.st_size > max_bytes:
            raise Refused("too_large", f"{path!r} is over the {max_bytes}-byte file limit")
        data = os.pread(fd, min(length, CHUNK_MAX), offset)
    finally:
        os.close(fd)
    return {"file_size": info.st_size}, data


def write_code(code, suffix):
    """A fresh directory holding the program file: (directory, file).

    Runs share our uid and /tmp, so a run could plant a FIFO or symlink where a later run's code goes: the
    name is random, and the file is created with O_EXCL|O_NOFOLLOW|O_NONBLOCK (a plant that wins the race
    only costs a retry; nothing can make us block or write elsewhere).
    """
    for _ in range(8):
        code_dir = CODE_PREFIX + os.urandom(8).hex()
        try:
            os.mkdir(code_dir, 0o700)
            path = os.path.join(code_dir, "main" + suffix)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(code)
        return code_dir, path
    raise OSError("could not create a fresh directory for the program")


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_regular(fd):
    return stat.S_ISREG(os.fstat(fd).st_mode)


def exit_code(status):
    """A waitpid status as a return code, negative for a signal (as subprocess reports it)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def processes():
    """pid -> (state, ppid, pgrp, session) for every process in this pid namespace."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        found[int(name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return found


PROGRAM_NICE = 19


def empty_tree(path):
    """Remove everything below ``path`` (never following symlinks), whatever modes a run gave it."""
    with os.scandir(path) as entries:
        items = [(entry.path, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for full, is_dir in items:
        if is_dir:
            os.chmod(full, 0o700)  # a run may have left it unreadable or unwritable: it is ours
            empty_tree(full)
            os.rmdir(full)
        else:
            os.unlink(full)


def wipe(top):
    """Empty ``top``; what could not be removed, as messages (none: it is empty)."""
    if not os.path.isdir(top):
        return []
    try:
        if top == ROOT:
            os.chmod(ROOT, 0o700)  # its mode as a new container has it, whatever a run set
        empty_tree(top)
        left = os.listdir(top)
    except Exception as exc:  # deep trees (RecursionError) included: the container is replaced
        return [f"{top}: {exc!r}"]
    return [f"{top} still holds {left[:5]}"] if left else []


def remove_sysv_ipc():
    """Remove the System V shared memory, semaphores and queues runs left (they outlive processes)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        return
    calls = {"shm": lambda i: libc.shmctl(i, IPC_RMID, None), "msg": lambda i: libc.msgctl(i, IPC_RMID, None)}
    calls["sem"] = lambda i: libc.semctl(i, 0, IPC_RMID)
    for kind in SYSV_IPC:
        for ident in _sysv_ids(kind):
            calls[kind](ident)


def _sysv_ids(kind):
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            return [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
    except (OSError, ValueError, IndexError):
        return []


def _listening():
    """Sockets still bound in the container's network namespace (tcp/udp listening, unix listening)."""
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{proto}") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        # tcp: state 0A is LISTEN (TIME_WAIT leftovers of closed connections are harmless); udp: any socket.
        found += [f"{proto} {row[1]}" for row in rows if len(row) > 3 and (row[3] == "0A" or "udp" in proto)]
    try:
        with open("/proc/net/unix") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        found += [f"unix {row[-1]}" for row in rows if len(row) > 3 and int(row[3], 16) & 0x10000]
    except (OSError, ValueError):
        pass
    return found


def leftovers(keep):
    """What would let the next user see this one: processes (but pid 1 and ``keep``), files, modes, tmpfs
    pages, System V IPC, sockets."""
    others = sorted(pid for pid in processes() if pid != 1 and pid not in keep)
    dirt = [f"processes left: {others[:8]}"] if others else []
    info = os.stat(ROOT)
    if stat.S_IMODE(info.st_mode) != 0o700 or info.st_uid != os.getuid():
        dirt.append(f"{ROOT} has mode {stat.S_IMODE(info.st_mode):o}, uid {info.st_uid}")
    for top in TMPFS:
        if os.path.isdir(top):
            fs = os.statvfs(top)
            if fs.f_blocks != fs.f_bfree:  # pages held by a file still open somewhere, or not removed
                dirt.append(f"{top} still uses {(fs.f_blocks - fs.f_bfree) * fs.f_frsize} bytes")
    dirt += [f"System V {kind} left: {ids}" for kind in SYSV_IPC if (ids := _sysv_ids(kind))]
    dirt += [f"socket left: {s}" for s in _listening()]
    return dirt


def run_limits(request):
    """A run's rlimits: CPU seconds (a backstop behind the wall-clock timer), file size, no core dumps."""
    return {"cpu": int(request["timeout"]) + 2, "fsize": request["fsize"], "core": 0}


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class Zygote:
    """The executor's end of a fork server (``docker_zygote.py``) for runs of one kind (flags, environment)."""

    def __init__(self, key, runner, flags, env):
        self.key = key
        self.marker = os.urandom(
            8
        ).hex()  # in every fork's /proc/<pid>/environ: protected while one is pending
        self.ready = self.dead = False
        self.pending = {}  # request id -> future of the forked program's pid
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)] + [
            (os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1)
        ]
        argv = [runner] + list(flags) + ["-c", ZYGOTE_SOURCE]
        try:
            self.pid = os.posix_spawn(
                runner, argv, dict(env, ALIGNGYM_ZYGOTE=self.marker), file_actions=actions, setsid=True
            )
        finally:
            os.close(null)
            theirs.close()
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self):
        try:
            data = self.sock.recv(1 << 16)
            message = json.loads(data) if data else None
        except BlockingIOError:
            return
        except (OSError, ValueError):
            message = None
        if message is None:
            self.close()
        elif "ready" in message:
            self.ready = bool(message.get("undumpable"))  # else programs could reach its socket: not used
            if not self.ready:
                self.close()
        else:
            # Left in ``pending`` until ``fork`` resumes: an exit reaped before then is kept in ``early``.
            future = self.pending.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message.get("pid"))

    async def fork(self, job, fds):
        """The pid of the program forked for ``job`` (an orphan: ours to reap), or None (spawn it instead)."""
        rid = job["id"]
        future = self.pending[rid] = asyncio.get_running_loop().create_future()
        try:
            self.sock.sendmsg(
                [json.dumps(job).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
            return await asyncio.wait_for(future, ZYGOTE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):  # noqa: UP041  (distinct before Python 3.11)
            self.close()  # stopped, or gone: the next run starts another
            return None
        finally:
            self.pending.pop(rid, None)

    def close(self):
        if self.dead:
            return
        self.dead, self.ready = True, False
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        for future in self.pending.values():
            if not future.done():
                future.set_result(None)


class Executor:
    """Pid 1 of a sandbox container: spawns runs, reaps every process, kills what finished runs leave."""

    def __init__(self, transport):
        self.transport = transport
        self.children = {}  # pid -> future of its return code
        self.roots = set()  # pids (and session ids) of runs in flight
        self.tokens = set()  # ALIGNGYM_RUN values of runs in flight (inherited by their daemons)
        self.tasks = {}  # request id -> task of a run
        self.prlimit = shutil.which("prlimit")
        self.staged = {}  # stage id -> memfd holding a run's stdin, sent ahead in chunks
        self.interrupted = set()  # ids of runs a reset cancelled: they reply sandbox_error
        self.zygote = None  # the fork server of isolated Python runs, once one was asked for
        self.zygote_starts = 0
        self.early = {}  # pid -> exit code of processes reaped before anyone waited for them

    def stage(self, sid, data):
        """Append a chunk to the stdin staged as ``sid`` (a memfd: no path a program could plant on)."""
        if sid not in self.staged:
            self.staged[sid] = os.memfd_create("stdin", os.MFD_CLOEXEC)
        _write_all(self.staged[sid], data)
        return {}

    def unstage(self, sid):
        fd = self.staged.pop(sid, None)
        if fd is not None:
            os.close(fd)
        return {}

    def stdin_fd(self, request):
        """The run's stdin: its staged memfd, one holding the inline bytes, or /dev/null."""
        if request.get("stdin_stage") is not None:
            fd = self.staged.pop(request["stdin_stage"], None)
            if fd is None:
                raise Refused("not_staged", "the run's stdin was not staged")
        elif request.get("stdin"):  # the request's payload is the stdin
            fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
            try:
                _write_all(fd, request.get("payload", b""))
            except BaseException:
                os.close(fd)
                raise
        else:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def send(self, message, payload=b""):
        """A reply: length-prefixed JSON, then ``size`` raw bytes when there is a payload (no base64)."""
        if payload:
            message["size"] = len(payload)
        data = json.dumps(message).encode()
        self.transport.write(struct.pack(">I", len(data)) + data)
        if payload:
            self.transport.write(payload)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            future = self.children.pop(pid, None)
            if future is not None and not future.done():
                future.set_result(exit_code(status))
            elif self.zygote is not None and pid == self.zygote.pid:
                self.zygote.close()  # it died: its pid is free now, so it must never count as ours again
            elif self.zygote is not None and self.zygote.pending:  # a forked run we have not heard of yet?
                self.early[pid] = exit_code(status)
                if len(self.early) > EARLY_EXITS:
                    del self.early[next(iter(self.early))]

    def _protected(self, pid, table):
        """Whether ``pid`` belongs to a run still in flight (same session, or a descendant of its root)."""
        start, seen = pid, 0
        server = self.zygote.pid if self.zygote is not None and not self.zygote.dead else None
        while pid > 1 and seen < 4096:
            if pid in self.roots or pid == server or table.get(pid, (0, 0, 0, 0))[3] in self.roots:
                return True
            pid, seen = table.get(pid, (0, 0))[1], seen + 1
        return self._marked_live(start)

    def _marked_live(self, pid):
        """Whether ``pid``'s environment carries the marker of a run still in flight."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                items = f.read().split(b"\0")
        except OSError:
            return False
        forking = self.zygote is not None and self.zygote.pending
        return any(
            (i.startswith(b"ALIGNGYM_RUN=") and i[13:].decode("ascii", "replace") in self.tokens)
            or (forking and i == b"ALIGNGYM_ZYGOTE=" + self.zygote.marker.encode())
            for i in items
        )

    def sweep(self):
        """SIGKILL every process except pid 1 and runs in flight: what escaped a finished run (setsid, double fork)."""
        for _ in range(200):
            table = processes()
            victims = [
                pid
                for pid, (state, _, _, _) in table.items()
                if pid != 1 and state != b"Z" and not self._protected(pid, table)
            ]
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)
            self.reap()

    def bury(self, pid):
        """Wait (a moment at most) until a killed child ``pid`` is reaped, so no zombie counts as left over."""
        for _ in range(500):
            self.reap()
            if pid not in processes():
                return
            time.sleep(0.002)

    def dispatch(self, request):
        op, rid = request.get("op"), request.get("id")
        if op == "run":
            task = asyncio.ensure_future(self.run_and_reply(request))
            self.tasks[rid] = task
            task.add_done_callback(lambda _: self.tasks.pop(rid, None))
        elif op == "reset":
            asyncio.ensure_future(self.reset_and_reply(rid))
        elif op == "cancel":
            task = self.tasks.get(request.get("target"))
            if task is not None:
                task.cancel()
        elif op in ("write", "read", "stage", "unstage", "ping"):
            payload = b""
            try:
                if op == "write":
                    reply = write_chunk(
                        request["path"], request["offset"], request.get("payload", b""), request["max_bytes"]
                    )
                elif op == "read":
                    reply, payload = read_chunk(
                        request["path"], request["offset"], request["length"], request["max_bytes"]
                    )
                elif op == "stage":
                    reply = self.stage(request["stage"], request.get("payload", b""))
                elif op == "unstage":
                    reply = self.unstage(request["stage"])
                else:
                    reply = {}
            except Refused as exc:
                reply = {"error": {"kind": exc.kind, "message": str(exc)}}
            except FileNotFoundError as exc:
                reply = {"error": {"kind": "not_found", "message": str(exc)}}
            except OSError as exc:
                reply = {"error": {"kind": "os", "message": str(exc)}}
            reply["id"] = rid
            self.send(reply, payload if "error" not in reply else b"")

    async def reset(self):
        """Make the container as a new one has it: every process but pid 1 killed, every writable place
        emptied, System V IPC removed; what is still left (nothing: clean) as messages."""
        runs = list(self.tasks.items())
        for rid, task in runs:
            self.interrupted.add(rid)
            task.cancel()
        if runs:  # each run's own cleanup kills its group and removes its code directory
            await asyncio.wait([task for _, task in runs], timeout=4 * GRACE_S)
        self.roots.clear()
        self.tokens.clear()
        self.sweep()
        self.reap()
        self.early.clear()
        if self.zygote is not None and processes().get(self.zygote.pid, (b"X",))[0] not in (b"S", b"R"):
            self.zygote.close()  # stopped (or stuck) by a program: the next user gets a fresh one
            self.bury(self.zygote.pid)
        for sid in list(self.staged):
            self.unstage(sid)
        remove_sysv_ipc()
        dirt = [message for top in WRITABLE for message in wipe(top)]
        server = self.zygote.pid if self.zygote is not None and not self.zygote.dead else None
        return dirt + leftovers({server})

    async def reset_and_reply(self, rid):
        try:
            dirt = await self.reset()
        except Exception as exc:
            dirt = [f"the reset failed: {exc!r}"]
        self.send({"id": rid, "clean": not dirt, "dirt": dirt[:20]})

    async def run_and_reply(self, request):
        try:
            reply = await self.run(request)
        except asyncio.CancelledError:
            if request["id"] not in self.interrupted:
                return  # the host cancelled it and waits for no reply
            self.interrupted.discard(request["id"])
            reply = {"status": "sandbox_error", "stderr": _b64(b"the sandbox was reset during the run")}
        except Exception as exc:
            reply = {"status": "sandbox_error", "stderr": _b64(f"executor failed: {exc!r}".encode())}
        reply["id"] = request["id"]
        self.send(reply)

    def zygote_for(self, request, env):
        """The ready fork server for this run, if it is one that a forked interpreter serves as well."""
        isolated = request.get("isolated")
        if not ZYGOTE_SOURCE or request["language"] != "python" or not isolated:
            return None
        key = json.dumps(
            [isolated["flags"], {k: v for k, v in env.items() if k != "ALIGNGYM_RUN"}], sort_keys=True
        )
        if self.zygote is not None and (self.zygote.dead or self.zygote.key != key):
            self.zygote.close()
            self.zygote = None
        if self.zygote is None and self.zygote_starts < ZYGOTE_STARTS:
            self.zygote_starts += 1
            runner = shutil.which(RUNNER["python"], path=env["PATH"]) or RUNNER["python"]
            base = {k: v for k, v in env.items() if k != "ALIGNGYM_RUN"}
            try:
                self.zygote = Zygote(key, runner, isolated["flags"], base)
            except OSError:
                return None
            return None  # it starts in the background; this run is spawned
        return self.zygote if self.zygote is not None and self.zygote.ready else None

    async def launch(self, request, code_file, env, fds):
        """Start the program with ``fds`` as its stdio: forked from the warm interpreter when one serves
        this kind of run, else spawned (``prlimit`` and the runner, in a new session)."""
        zygote = self.zygote_for(request, env)
        if zygote is not None:
            job = {"id": request["id"], "program": code_file, "env": env, "cwd": ROOT, "nice": PROGRAM_NICE}
            job["limits"] = run_limits(request)
            pid = await zygote.fork(job, fds)
            if pid is not None:
                return pid
        argv = self._argv(request, code_file, env)
        # Python ignores SIGPIPE and SIGXFSZ; the program gets the default actions back.
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )

    def _argv(self, request, code_file, env):
        limits = run_limits(request)
        runner = shutil.which(RUNNER[request["language"]], path=env["PATH"]) or RUNNER[request["language"]]
        if self.prlimit:
            prefix = [self.prlimit] + [f"--{k}={v}" for k, v in limits.items()] + ["--"]
        else:
            spec = ",".join(f"{k}={v}" for k, v in limits.items())
            prefix = [sys.executable, "-I", "-S", "-c", RLIMIT_SHIM, spec]
        isolated = request.get("isolated")
        return prefix + [runner] + (isolated["flags"] if isolated else []) + [code_file]

    async def run(self, request):
        loop = asyncio.get_running_loop()
        path = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        if request.get("isolated"):
            # The host's whole isolated environment (sandboxes.base.isolated_request), PATH ours unless it
            # names one; never the config's env extras.
            env = dict(request["isolated"]["env"])
            env.setdefault("PATH", path)
        else:
            env = {
                "PATH": path,
                "HOME": ROOT,
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": ROOT,
            }
            env.update(request.get("env") or {})
        # A double-forked daemon leaves its run's session and is reparented to us (pid 1), so ancestry cannot
        # tell whose it is; the inherited marker can (forging another run's only delays its death to that end).
        token = env["ALIGNGYM_RUN"] = os.urandom(8).hex()
        code_dir, code_file = write_code(request["code"], SUFFIX[request["language"]])
        try:
            in_r = self.stdin_fd(request)
        except BaseException:
            shutil.rmtree(code_dir, ignore_errors=True)
            raise
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        oom_before = oom_kills()
        started = time.monotonic()
        try:
            pid = await self.launch(request, code_file, env, (in_r, out_w, err_w))
        except BaseException as exc:  # a reset's cancellation included
            for fd in (out_r, err_r):
                os.close(fd)
            shutil.rmtree(code_dir, ignore_errors=True)
            if not isinstance(exc, OSError):
                raise
            return {"status": "sandbox_error", "stderr": _b64(f"could not start: {exc}".encode())}
        finally:
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        try:
            # The program shares the container's CPUs with this executor; a fork bomb at equal weight
            # starved its timer (kills came a second late). Nice 19 costs a lone program nothing.
            os.setpriority(os.PRIO_PGRP, pid, PROGRAM_NICE)
        except OSError:
            pass
        exited = loop.create_future()
        if pid in self.early:  # a forked run that ended before its pid reached us
            exited.set_result(self.early.pop(pid))
        else:
            self.children[pid] = exited
        self.roots.add(pid)
        self.tokens.add(token)
        try:
            # The OOM killer must pick the program, never the executor.
            with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        cap = request["cap"]
        out, err, overflow = bytearray(), bytearray(), asyncio.Event()
        pumps = [_pump(loop, out_r, out, cap, overflow), _pump(loop, err_r, err, cap, overflow)]
        flagged = asyncio.ensure_future(overflow.wait())
        killed = timed_out = False
        try:
            await asyncio.wait(
                {exited, flagged}, timeout=request["timeout"], return_when=asyncio.FIRST_COMPLETED
            )
            timed_out = not exited.done() and not overflow.is_set()
            killed = not exited.done()
            if killed:
                kill_group(pid)
            await asyncio.wait({exited}, timeout=GRACE_S)
            duration = time.monotonic() - started
        finally:
            self.roots.discard(pid)
            self.tokens.discard(token)
            kill_group(pid)
            self.sweep()
            await asyncio.wait([p for p, _ in pumps], timeout=GRACE_S)
            for _, close in pumps:
                close()
            flagged.cancel()
            shutil.rmtree(code_dir, ignore_errors=True)
        rc = exited.result() if exited.done() else None
        if rc is not None and rc < 0:
            rc = 128 - rc  # killed by a signal: report it the way shells do
        oom_after = oom_kills()
        if timed_out:
            status, rc = "timeout", None
        elif overflow.is_set():
            status, rc = "output_limit", None  # stopped by us, even if a broken pipe ended it first
        elif rc == 128 + signal.SIGXCPU:
            status = "timeout"  # RLIMIT_CPU
        elif rc not in (0, None) and (
            (oom_before is not None and oom_after is not None and oom_after > oom_before)
            or (oom_after is None and rc == 128 + signal.SIGKILL)
            or any(marker in bytes(err[-8192:]).lower() for marker in MEMORY_MARKERS)
        ):
            status = "memory"
        else:
            status = "ok" if rc == 0 else "error"
        return {
            "status": status,
            "stdout": _b64(out),
            "stderr": _b64(err),
            "exit_code": rc,
            "duration_s": duration,
            "truncated": overflow.is_set(),
        }


def _b64(data):
    return base64.b64encode(bytes(data)).decode()


def _pump(loop, fd, buf, cap, overflow):
    """Read ``fd`` into ``buf`` up to ``cap`` bytes (then flag the overflow); (future done at EOF, closer)."""
    done = loop.create_future()
    os.set_blocking(fd, False)

    def on_readable():
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        room = cap - len(buf)
        if len(chunk) > room:
            buf.extend(chunk[:room])
            overflow.set()
            chunk = b""
        else:
            buf.extend(chunk)
        if not chunk:
            loop.remove_reader(fd)
            if not done.done():
                done.set_result(None)

    def close():
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, on_readable)
    return done, close


class LaneProtocol(asyncio.BufferedProtocol):
    """Messages from the host's lane, read straight into their own buffers: a file chunk's bytes are copied
    once, from the socket into the buffer that is then written to the file (a stream reader copies three
    times). ``dispatch`` gets each request; ``closed`` is done when the host goes away."""

    def __init__(self, dispatch):
        self.dispatch = dispatch
        self.closed = asyncio.get_running_loop().create_future()
        self.scratch = bytearray(READ_BUFFER)  # headers, and the bytes read past them
        self.filled = 0
        self.request = None  # a header whose payload is still arriving
        self.payload = None
        self.got = 0

    def get_buffer(self, sizehint):
        if self.request is not None:
            return memoryview(self.payload)[self.got :]
        if self.filled == len(self.scratch):  # a header longer than the scratch buffer: make room
            self.scratch.extend(bytes(len(self.scratch)))
        return memoryview(self.scratch)[self.filled :]

    def buffer_updated(self, nbytes):
        if self.request is not None:
            self.got += nbytes
            if self.got == len(self.payload):
                self._deliver()
            return
        self.filled += nbytes
        self._parse()

    def _parse(self):
        """Take every whole header (and payload) out of the scratch buffer."""
        view, start = memoryview(self.scratch), 0
        while self.filled - start >= 4:
            size = struct.unpack(">I", view[start : start + 4])[0]
            if self.filled - start - 4 < size:
                break
            request = json.loads(bytes(view[start + 4 : start + 4 + size]))
            start += 4 + size
            self.request, self.payload = request, bytearray(request.get("size") or 0)
            self.got = min(len(self.payload), self.filled - start)
            self.payload[: self.got] = view[start : start + self.got]
            start += self.got
            if self.got < len(self.payload):
                break  # the rest arrives straight into the payload (get_buffer)
            self._deliver()
        view.release()
        # Moved down in place: the transport still holds a view of the buffer, so it must not be resized.
        rest = self.filled - start
        self.scratch[:rest] = self.scratch[start : self.filled]
        self.filled = rest

    def _deliver(self):
        request, payload = self.request, self.payload
        self.request = self.payload = None
        if payload:
            request["payload"] = payload
        self.dispatch(request)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)


async def open_lane(dispatch):
    """(protocol, transport, token) of the host's unix socket mounted at LANE, or None: stdio carries all then.

    The lane has no daemon in the path (the attach stream goes through dockerd: several times slower for
    files). We connect before any program runs; the token, sent here and in the hello over stdout, which
    only the host reads, tells the host this connection is ours.
    """
    if not os.path.exists(LANE):
        return None
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_unix_connection(lambda: LaneProtocol(dispatch), LANE)
    except OSError:
        return None
    token = os.urandom(16).hex()
    transport.write(token.encode())
    return protocol, transport, token


async def serve(executor, reader):
    """Dispatch requests from ``reader`` until the host goes away."""
    try:
        while True:
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            request = json.loads(await reader.readexactly(size))
            if request.get("size"):  # raw bytes follow (file chunks, stdin): never base64 in JSON
                request["payload"] = await reader.readexactly(request["size"])
            executor.dispatch(request)
    except asyncio.IncompleteReadError:
        pass


async def main():
    loop = asyncio.get_running_loop()
    undumpable = make_undumpable()
    stdin = asyncio.StreamReader(limit=READ_BUFFER)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", 0))
    stdout, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", 0))
    executor = Executor(stdout)
    lane = await open_lane(executor.dispatch)
    loop.add_signal_handler(signal.SIGCHLD, executor.reap)
    # The kernel drops signals that programs in the container send to pid 1 unless it handles them: with
    # Python's SIGINT handler gone, nothing a program sends can stop the executor.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    executor.send(
        {
            "op": "hello",
            "pid": os.getpid(),
            "uid": os.getuid(),
            "python": sys.version.split()[0],
            "undumpable": undumpable,
            "lane": lane and lane[2],
        }
    )
    if lane is None:
        await serve(executor, stdin)
    else:
        executor.transport = lane[1]
        # The host closing either end (or dying) is the end: stdin's EOF still counts.
        ends = {lane[0].closed, asyncio.ensure_future(stdin.read())}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    # The host went away: pid 1 exits and the kernel kills everything else.
    for task in list(executor.tasks.values()):
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
