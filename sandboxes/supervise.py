"""Supervising one sandboxed process: stdin, capped output, the wall-clock limit and how the run ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from .base import RunResult, Status
from .limits import Cgroup

_CHUNK = 64 * 1024
# ENOSPC too: everything a run can write (working directory, /tmp, /dev/shm) is a tmpfs, i.e. its memory.
_MEMORY_MARKERS = (
    b"memoryerror",
    b"cannot allocate memory",
    b"out of memory",
    b"bad_alloc",
    b"no space left on device",
)
# How long to keep reading output after the process exited: an escaped unisolated daemon may hold the pipes.
_GRACE_S = 1.0


async def _pump(stream: asyncio.StreamReader, buf: bytearray, cap: int, overflow: asyncio.Event) -> None:
    """Copy a stream into ``buf`` until EOF or ``cap`` bytes; then flag the overflow and stop reading."""
    while chunk := await stream.read(_CHUNK):
        room = cap - len(buf)
        if len(chunk) > room:
            buf += chunk[:room]
            overflow.set()
            return
        buf += chunk


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    """Write stdin and close it; a program that exits without reading it is not an error."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
        pipe.close()


def _setup_finished(status_fd: int) -> bool:
    """Whether bwrap reported the program's exit (it does not when the sandbox itself failed to start)."""
    os.set_blocking(status_fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(status_fd, 4096):
            data += chunk
    return b'"exit-code"' in data


def _mentions_memory(stderr: bytearray) -> bool:
    tail = bytes(stderr[-8192:]).lower()
    return any(marker in tail for marker in _MEMORY_MARKERS)


def kill_tree(pgid: int, cgroup: Cgroup | None = None) -> None:
    """SIGKILL a run's process group (and its cgroup): bwrap's pid namespace then takes everything inside."""
    if cgroup is not None:
        cgroup.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def supervise(
    proc: asyncio.subprocess.Process,
    *,
    started: float,
    stdin: bytes | None,
    limit: float,
    cap: int,
    status_fd: int | None,
    cgroup: Cgroup | None,
) -> RunResult:
    """Feed stdin, collect up to ``cap`` bytes per stream, kill the tree past ``limit`` s and classify the end.

    ``status_fd`` is the read end of bwrap's ``--json-status-fd`` (None without bwrap).
    """
    assert proc.stdout is not None and proc.stderr is not None
    out, err, overflow = bytearray(), bytearray(), asyncio.Event()
    readers = [
        asyncio.create_task(_pump(s, b, cap, overflow)) for s, b in ((proc.stdout, out), (proc.stderr, err))
    ]
    feeder = (
        asyncio.create_task(_feed(proc.stdin, stdin))
        if proc.stdin is not None and stdin is not None
        else None
    )
    exited = asyncio.create_task(proc.wait())
    flagged = asyncio.create_task(overflow.wait())
    try:
        await asyncio.wait({exited, flagged}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        timed_out = not exited.done() and not overflow.is_set()
        killed = not exited.done()
        if killed:
            kill_tree(proc.pid, cgroup)
        await asyncio.wait({exited}, timeout=_GRACE_S)
        duration = time.monotonic() - started
        # Whatever is left in the process group (a background job of an unisolated run) ends with the run.
        kill_tree(proc.pid, cgroup)
        await asyncio.wait(readers, timeout=_GRACE_S)
    finally:
        if proc.returncode is None:  # cancelled: the run must not outlive its caller
            kill_tree(proc.pid, cgroup)
            await asyncio.wait({exited}, timeout=_GRACE_S)
        # Close the pipes while this loop still runs: the caller's loop may end right after (run() uses
        # asyncio.run), and an escaped process may still hold them. Process has no public close().
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()
        for task in (*readers, flagged, feeder):
            if task is not None:
                task.cancel()
    rc = proc.returncode
    if rc is not None and rc < 0:
        rc = 128 - rc  # killed by a signal: report it the way shells (and bwrap) do
    if status_fd is not None and not killed and not _setup_finished(status_fd):
        return RunResult(
            "sandbox_error",
            stdout=out.decode("utf-8", errors="replace"),
            stderr=f"the sandbox failed to start: {err.decode('utf-8', errors='replace')}",
            duration_s=duration,
            truncated=overflow.is_set(),
        )
    oom = cgroup is not None and cgroup.oom_killed()
    return finish(
        rc, out, err, duration, timed_out=timed_out, overflow=overflow.is_set(), killed=killed, oom=oom
    )


def finish(
    rc: int | None,
    out: bytearray,
    err: bytearray,
    duration: float,
    *,
    timed_out: bool,
    overflow: bool,
    killed: bool,
    oom: bool,
) -> RunResult:
    """Classify how a run ended (``rc`` as a shell reports it, 128+N for signal N) and build its result."""
    status: Status
    if timed_out:
        status, rc = "timeout", None
    elif overflow:
        status, rc = "output_limit", None  # stopped by us, even if a broken pipe ended it first
    elif rc == 128 + signal.SIGXCPU:
        status = "timeout"  # RLIMIT_CPU
    elif rc != 0 and (oom or _mentions_memory(err)):
        status = "memory"
    else:
        status = "ok" if rc == 0 else "error"
    return RunResult(
        status=status,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        exit_code=rc,
        duration_s=duration,
        truncated=overflow,
    )
