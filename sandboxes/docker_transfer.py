"""Moving bytes to and from a docker sandbox's executor in chunks: files both ways, and a run's stdin.

The executor's memory is the container's (a run's limit plus a small reserve), so no request or reply may
hold a whole file: each carries at most ``CHUNK_BYTES``, and at most ``WINDOW`` are in flight at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterable, Iterator, Sequence

from .base import SandboxError
from .docker_channel import _Channel

CHUNK_BYTES = 1 << 20
WINDOW = 8  # requests in flight: enough to keep the channel busy, few enough to bound both ends' memory
#: Read replies in flight: the executor buffers each unsent reply in its own (the container's) memory.
READ_WINDOW = 2
#: Errors the executor reports, as the exceptions a local sandbox would raise.
_ERRORS = {"not_found": FileNotFoundError}


class ExecutorHung(SandboxError):
    """The executor did not answer a transfer request in time (its container must go)."""


def raise_for(reply: dict) -> dict:
    """The reply, or the exception its ``error`` names."""
    if error := reply.get("error"):
        raise _ERRORS.get(error["kind"], SandboxError)(error["message"])
    return reply


def _wait(channel: _Channel, pending: tuple[int, concurrent.futures.Future], timeout: float) -> dict:
    rid, future = pending
    try:
        return raise_for(future.result(timeout))
    except concurrent.futures.TimeoutError:
        channel.forget(rid)
        raise ExecutorHung(f"the executor did not answer a transfer request in {timeout:.0f}s") from None


def call_all(
    channel: _Channel, requests: Iterable[tuple[dict, bytes]], timeout: float, window_size: int = WINDOW
) -> list[dict]:
    """Send (request, payload)s in order, ``window_size`` at most unanswered; their replies (an error raises)."""
    window: collections.deque = collections.deque()
    replies = []
    try:
        for request, payload in requests:
            window.append(channel.submit(request, payload))
            if len(window) >= window_size:
                replies.append(_wait(channel, window.popleft(), timeout))
        while window:
            replies.append(_wait(channel, window.popleft(), timeout))
    finally:
        for rid, _ in window:
            channel.forget(rid)
    return replies


def _chunks(data: bytes) -> Iterator[tuple[int, memoryview]]:
    """(offset, view) per chunk, not copied; one empty chunk for empty data, so the file is still created."""
    view = memoryview(data)
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        yield offset, view[offset : offset + CHUNK_BYTES]


def write_files(
    channel: _Channel, files: Sequence[tuple[str, bytes]], max_bytes: int, written: set[str], timeout: float
) -> None:
    """Write files in ``/sandbox``: the chunks of all of them through one window (the first chunk of each
    truncates it), not a round trip per file. Each path whose chunks all came back written goes into
    ``written``, also when another fails: the first error then raises once the chunks in flight answered
    (``ExecutorHung`` first of all: its container must go)."""
    requests = (
        (path, {"op": "write", "path": path, "offset": offset, "max_bytes": max_bytes}, chunk)
        for path, data in files
        for offset, chunk in _chunks(data)
    )
    left = {path: _chunk_count(len(data)) for path, data in files}
    window: collections.deque[tuple[str, tuple[int, concurrent.futures.Future]]] = collections.deque()
    errors: list[SandboxError | OSError] = []

    def settle(path: str, pending: tuple[int, concurrent.futures.Future]) -> None:
        try:
            _wait(channel, pending, timeout)
        except (SandboxError, OSError) as exc:
            errors.append(exc)
            left[path] = -1  # never whole now
            return
        left[path] -= 1
        if left[path] == 0:
            written.add(path)

    def hung() -> bool:
        return any(isinstance(exc, ExecutorHung) for exc in errors)

    try:
        for path, request, chunk in requests:
            if errors:
                break  # send nothing more; what is in flight still answers below
            window.append((path, channel.submit(request, chunk)))
            if len(window) >= WINDOW:
                settle(*window.popleft())
        while window and not hung():  # a hung executor answers nothing more
            settle(*window.popleft())
    finally:
        for _, (rid, _) in window:
            channel.forget(rid)
    if errors:
        raise next((exc for exc in errors if isinstance(exc, ExecutorHung)), errors[0])


def _chunk_count(size: int) -> int:
    """How many requests ``_chunks`` makes of ``size`` bytes (one for an empty file)."""
    return max(1, -(-size // CHUNK_BYTES))


def read_file(channel: _Channel, path: str, max_bytes: int, timeout: float) -> bytes:
    """The bytes of a file in ``/sandbox`` (refused past ``max_bytes``): its first chunk tells the size, the
    rest are asked for together (``READ_WINDOW`` in flight)."""

    def ask(offset: int) -> tuple[dict, bytes]:
        return {
            "op": "read",
            "path": path,
            "offset": offset,
            "length": CHUNK_BYTES,
            "max_bytes": max_bytes,
        }, b""

    first = _wait(channel, channel.submit(*ask(0)), timeout)
    size, parts = first["file_size"], [first.get("payload", b"")]
    rest = map(ask, range(CHUNK_BYTES, size, CHUNK_BYTES))
    for reply in call_all(channel, rest, timeout, READ_WINDOW):
        parts.append(reply.get("payload", b""))
    # A file that a run rewrites meanwhile reads as a mix, as it would locally; never past max_bytes.
    return b"".join(parts)


def stage_stdin(channel: _Channel, stage: str, data: bytes, timeout: float) -> None:
    """Send a run's stdin ahead of the run, into a memfd the executor keeps under ``stage``."""
    requests = (({"op": "stage", "stage": stage}, chunk) for _, chunk in _chunks(data))
    try:
        call_all(channel, requests, timeout)
    except SandboxError:
        unstage(channel, stage)
        raise


def unstage(channel: _Channel, stage: str) -> None:
    """Drop a staged stdin that no run will take (best effort)."""
    try:
        channel.submit({"op": "unstage", "stage": stage})
    except SandboxError:
        pass
