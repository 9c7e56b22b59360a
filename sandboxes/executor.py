"""The docker sandbox's in-container executor: runs programs on request, speaking length-prefixed JSON on stdio.

Started as the container's pid 1 by ``python3 -I -S -c <this file>``; stdlib only, Python >= 3.8, so it
runs in any image with a ``python3``. Requests and replies are a 4-byte big-endian length and a JSON object,
then, when the object has a ``size``, that many raw bytes (a file chunk, a run's stdin).
"""

import asyncio
import base64
import json
import os
import shutil
import signal
import stat
import struct
import sys
import time

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


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


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

    def _protected(self, pid, table):
        """Whether ``pid`` belongs to a run still in flight (same session, or a descendant of its root)."""
        start, seen = pid, 0
        while pid > 1 and seen < 4096:
            if pid in self.roots or table.get(pid, (0, 0, 0, 0))[3] in self.roots:
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
        return any(
            i.startswith(b"ALIGNGYM_RUN=") and i[13:].decode("ascii", "replace") in self.tokens for i in items
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

    def dispatch(self, request):
        op, rid = request.get("op"), request.get("id")
        if op == "run":
            task = asyncio.ensure_future(self.run_and_reply(request))
            self.tasks[rid] = task
            task.add_done_callback(lambda _: self.tasks.pop(rid, None))
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

    async def run_and_reply(self, request):
        try:
            reply = await self.run(request)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reply = {"status": "sandbox_error", "stderr": _b64(f"executor failed: {exc!r}".encode())}
        reply["id"] = request["id"]
        self.send(reply)

    def _argv(self, request, code_file, env):
        limits = {"cpu": int(request["timeout"]) + 2, "fsize": request["fsize"], "core": 0}
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
        actions = [
            (os.POSIX_SPAWN_DUP2, in_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        argv = self._argv(request, code_file, env)
        oom_before = oom_kills()
        started = time.monotonic()
        try:
            # Python ignores SIGPIPE and SIGXFSZ; the program gets the default actions back.
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            shutil.rmtree(code_dir, ignore_errors=True)
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
            status, rc = "output_limit", None if killed else rc
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
