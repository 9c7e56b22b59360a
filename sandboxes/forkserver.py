"""The host side of the fork server: one warm bwrap + interpreter per sandbox, forking a pristine copy per run.

``_forkserver_main`` (the program inside) explains the per-run namespaces; this side starts it, sends runs
with their code, stdin and output pipes as file descriptors, supervises each run (wall-clock limit, output
caps, cancellation) and notices when the server dies. The server reports a run's end only after every
process of that run is gone, so killing a run's pid 1 and waiting for that report is the whole tree-kill.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import RunResult
from .limits import Cgroup
from .supervise import finish

#: The server program, bound read-only into the sandbox.
SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_forkserver_main.py")
_CHUNK = 64 * 1024
_GRACE_S = 1.0
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


@dataclass(frozen=True)
class Prelude:
    """The start of trusted programs, which a fork server runs once and forks their runs from (``trust_prelude``)."""

    text: bytes
    digest: str


_preludes: list[Prelude] = []
_preludes_lock = threading.Lock()


def trust_prelude(text: str) -> None:
    """Vouch for ``text`` as the start of trusted programs (a grader's harness: module definitions, no work).

    A fork server then runs it once, in the server, the first time an isolated Python run's program starts
    with it, and forks such runs from that state: they execute only the rest of their program, and skip
    compiling and loading what every one of them loads alike. The state is the same a run of the whole
    program would build, so nothing changes for the program; other runs do not see the prelude's modules.
    Only text passed here (by the host's own code) is ever run in a server: a program that merely starts the
    same way gets the same state, and any other isolated program runs whole. ``text`` ends with a newline.
    """
    if not text.endswith("\n"):
        raise ValueError("a prelude must end with a newline")
    data = text.encode()
    prelude = Prelude(data, hashlib.sha256(data).hexdigest())
    with _preludes_lock:
        if prelude not in _preludes:
            _preludes.append(prelude)


def trusted_prelude(code: bytes) -> Prelude | None:
    """The trusted prelude ``code`` starts with (the longest), if any."""
    found = [p for p in _preludes if code.startswith(p.text)]
    return max(found, key=lambda p: len(p.text)) if found else None


class ServerGone(Exception):
    """The server was not there to take a run (it died or was closed before the run was sent)."""


class ServerStartError(Exception):
    """bwrap or the server failed to start; the message is their error output."""


class ServerUnsupported(ServerStartError):
    """The server started, but per-run namespaces do not work on this host."""


def _memfd(name: str, data: bytes) -> int:
    """A sealed (read-only) in-memory file holding ``data``, positioned at its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


class _Launcher:
    """Starts processes from one thread that lives as long as this process."""

    # bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that started it exits: a
    # server started from a short-lived worker thread (``asyncio.to_thread``) would die with that thread.

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._owner_pid = -1

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._owner_pid != os.getpid():  # first use, or a forked copy of this process
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._jobs,), name="sandbox-launcher", daemon=True
                ).start()
                self._owner_pid = os.getpid()
        done: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._jobs.put((argv, kwargs, done))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            argv, kwargs, done = jobs.get()
            try:
                done.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)


_launcher = _Launcher()


class _Drain:
    """Reads a pipe on the event loop into a buffer; past ``cap`` bytes it flags the overflow and stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, cap: int, overflow: asyncio.Event):
        self.loop, self.fd, self.cap, self.overflow = loop, fd, cap, overflow
        self.buf = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            room = self.cap - len(self.buf)
            if len(chunk) <= room:
                self.buf += chunk
                return
            self.buf += chunk[:room]
            self.overflow.set()
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if not self.done.done():
            self.done.set_result(None)


class ForkServer:
    """One fork server process tree (bwrap + server) and the runs in flight in it."""

    def __init__(
        self,
        argv_for: Callable[[int], list[str]],
        *,
        env: dict[str, str],
        pass_fds: Sequence[int] = (),
        log_path: str,
        cgroup: Cgroup | None = None,
    ):
        self._argv_for, self._env, self._pass_fds = argv_for, env, tuple(pass_fds)
        self._log_path, self.cgroup = log_path, cgroup
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        # run id -> (loop, future) of the caller waiting for its end; removed when the server reports it
        self._active: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._dead = False
        self._closed = False
        self._preloaded: set[str] = set()  # digests of the preludes sent to the server

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float) -> None:
        """Start bwrap and the server and wait for its hello; raises ``ServerStartError`` with the reason."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self._log_path, "wb") as log:
                self._proc = _launcher.popen(
                    self._argv_for(child.fileno()),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=self._env,
                    cwd="/",
                    pass_fds=(child.fileno(), *self._pass_fds),
                    start_new_session=True,  # one killpg reaches bwrap, whose --die-with-parent takes the rest
                )
        except OSError as exc:
            parent.close()
            raise ServerStartError(f"could not run bwrap: {exc}") from exc
        finally:
            child.close()
        self._ctl = parent
        parent.settimeout(timeout)
        try:
            hello = parent.recv(1 << 16)
        except OSError:
            hello = b""
        parent.settimeout(None)
        if hello[:1] != b"H":
            self._kill()
            raise ServerStartError(self._log_text() or "the fork server did not start")
        info = json.loads(hello[1:])
        if not info["ok"]:
            self._kill()
            raise ServerUnsupported(str(info.get("error")))
        self._thread = threading.Thread(target=self._read_loop, name="sandbox-forkserver", daemon=True)
        self._thread.start()

    def _log_text(self) -> str:
        with contextlib.suppress(OSError), open(self._log_path, "rb") as f:
            return f.read(1 << 16).decode("utf-8", errors="replace").strip()
        return ""

    @property
    def alive(self) -> bool:
        """Whether the server is up and taking runs."""
        return not self._dead and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Host pid of the bwrap process (its process group holds the whole sandbox)."""
        return self._proc.pid if self._proc is not None else None

    def _kill(self) -> None:
        """SIGKILL the whole tree: bwrap's group, and through --die-with-parent every process inside."""
        with self._lock:
            self._dead = True
        if self.cgroup is not None:
            self.cgroup.kill()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)

    def close(self) -> None:
        """Kill the server and every run in it; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.shutdown(socket.SHUT_RDWR)  # wakes the reader thread; the server sees EOF
        self._kill()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._ctl is not None:
            self._ctl.close()
        if self.cgroup is not None:
            self.cgroup.remove()

    def kill_runs(self, timeout: float = _GRACE_S) -> None:
        """Kill every run in flight and wait for their ends; a server that does not answer is killed."""
        with self._lock:
            ids = list(self._active)
        for run_id in ids:
            self._send_kill(run_id)
        deadline = time.monotonic() + timeout
        while self._active and not self._dead and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._active and not self._dead:
            self._kill()

    # -- messages ------------------------------------------------------------------------------------
    def _send(self, kind: bytes, body: dict[str, Any], fds: Sequence[int] = ()) -> None:
        assert self._ctl is not None
        data = kind + json.dumps(body).encode()
        with self._send_lock:
            if fds:
                socket.send_fds(self._ctl, [data], list(fds))
            else:
                self._ctl.send(data)

    def _preload(self, prelude: Prelude) -> None:
        """Send ``prelude`` to the server unless it has it; a run referring to it is always sent after it."""
        with self._send_lock:
            if prelude.digest in self._preloaded:
                return
            assert self._ctl is not None
            fd = _memfd("prelude", prelude.text)
            try:
                socket.send_fds(self._ctl, [b"P" + json.dumps({"digest": prelude.digest}).encode()], [fd])
            finally:
                os.close(fd)
            self._preloaded.add(prelude.digest)

    def _send_kill(self, run_id: int) -> None:
        with contextlib.suppress(OSError):
            self._send(b"K", {"id": run_id})

    @staticmethod
    def _deliver(entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]], value: Any) -> None:
        loop, future = entry

        def settle() -> None:
            if not future.done():
                future.set_result(value)

        with contextlib.suppress(RuntimeError):  # that run's loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle)

    def _read_loop(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                data = self._ctl.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if data[:1] != b"X":
                continue
            body = json.loads(data[1:])
            with self._lock:
                entry = self._active.pop(body["id"], None)
            if entry is not None:
                self._deliver(entry, (time.monotonic(), body))
        with self._lock:
            self._dead = True
            entries, self._active = list(self._active.values()), {}
        for entry in entries:
            self._deliver(entry, None)  # the server is gone, and every run with it

    # -- running -------------------------------------------------------------------------------------
    async def run(
        self,
        language: str,
        code: bytes,
        stdin: bytes | None,
        limit: float,
        rlimits: dict[str, int],
        cap: int,
        isolated: dict[str, Any] | None = None,
        prelude: Prelude | None = None,
    ) -> RunResult:
        """Run one program; ``isolated``: ``base.isolated_request`` for an isolated run (see ``Sandbox``);
        ``prelude``: the trusted prelude ``code`` starts with, to fork the run from (see ``trust_prelude``).

        ``ServerGone``: the server did not take the run.
        """
        loop = asyncio.get_running_loop()
        run_id = next(self._ids)
        ended: asyncio.Future[Any] = loop.create_future()
        body = {
            "id": run_id,
            "language": language,
            "rlimits": rlimits,
            "stdin": stdin is not None,
            "isolated": isolated,
        }
        if prelude is not None:
            body["prelude"] = prelude.digest
        sent: list[int] = []
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            sent += [_memfd("code", code), out_w, err_w]
            if stdin is not None:
                sent.append(_memfd("stdin", stdin))
            with self._lock:
                if self._dead or self._closed:
                    raise ServerGone("the fork server is not running")
                self._active[run_id] = (loop, ended)
            oom_before = self.cgroup.oom_kills() if self.cgroup is not None else 0
            started = time.monotonic()
            try:
                if prelude is not None:
                    self._preload(prelude)
                self._send(b"R", body, sent)
            except OSError as exc:
                with self._lock:
                    self._active.pop(run_id, None)
                raise ServerGone(f"the fork server did not take the run: {exc}") from exc
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in sent or (out_w, err_w):
                os.close(fd)
        overflow = asyncio.Event()
        out, err = _Drain(loop, out_r, cap, overflow), _Drain(loop, err_r, cap, overflow)
        flagged = asyncio.ensure_future(overflow.wait())
        try:
            await asyncio.wait({ended, flagged}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            killed = not ended.done()
            timed_out = killed and not overflow.is_set()
            if killed:
                self._send_kill(run_id)
                await asyncio.wait({ended}, timeout=_GRACE_S)
                if not ended.done():
                    self._kill()  # a server that cannot confirm the kill goes, with everything in it
            report = ended.result() if ended.done() else None
            duration = (report[0] if report else time.monotonic()) - started
            await asyncio.wait({out.done, err.done}, timeout=_GRACE_S)
        finally:
            if not ended.done():  # cancelled, or the server was killed: the run must not outlive us
                self._send_kill(run_id)
            flagged.cancel()
            out.close()
            err.close()
        if report is None:
            if not killed:
                return RunResult(
                    "sandbox_error",
                    stdout=out.buf.decode("utf-8", errors="replace"),
                    stderr="the sandbox server stopped during the run",
                    duration_s=duration,
                )
            report = (0.0, {"code": None})  # we killed it, and then the server that would not confirm it
        if "error" in report[1]:
            error = report[1]["error"]
            return RunResult(
                "sandbox_error", stderr=f"the sandbox could not start the run: {error}", duration_s=duration
            )
        rc = report[1]["code"]
        # Any OOM kill in the sandbox during this run: a failed run whose children were killed hit the limit too.
        # Only a failed run can have been OOM-killed: a run that exited 0 saves reading the counter again.
        oom = rc != 0 and self.cgroup is not None and self.cgroup.oom_kills() > oom_before
        return finish(
            rc,
            out.buf,
            err.buf,
            duration,
            timed_out=timed_out,
            overflow=overflow.is_set(),
            killed=killed,
            oom=oom,
        )
