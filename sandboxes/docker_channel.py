"""The host end of the docker executor's channel: length-prefixed JSON over the container's attach socket."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import socket
import struct
import threading

from .base import SandboxError


class ChannelClosed(SandboxError):
    """The executor's channel ended: the container or its executor died, or the sandbox was closed."""


# -- owner identity and the reaper -------------------------------------------------------------------
class _Channel:
    """Length-prefixed JSON over a container's attached stdio; a reader thread matches replies to requests."""

    def __init__(self, sock: socket.socket, name: str):
        self._sock = sock
        self._send_lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self.hello: concurrent.futures.Future = concurrent.futures.Future()
        self.error: str | None = None
        self.stderr_tail = b""
        threading.Thread(target=self._read_loop, name=f"aligngym-docker-{name}", daemon=True).start()

    def _recv_exact(self, size: int) -> bytes | None:
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = self._sock.recv_into(view[got:])
            if n == 0:
                return None
            got += n
        return bytes(buf)

    def _read_loop(self) -> None:
        reason, buf = "the executor closed its channel", bytearray()
        waiting: dict | None = None  # a message whose raw payload has not all arrived yet
        try:
            # Docker multiplexes a non-tty container's output: 8-byte headers (stream, size) before each chunk.
            while (header := self._recv_exact(8)) is not None:
                payload = self._recv_exact(struct.unpack(">I", header[4:])[0]) or b""
                if header[0] == 2:
                    self.stderr_tail = (self.stderr_tail + payload)[-8192:]
                    continue
                buf += payload
                waiting = self._drain(buf, waiting)
        except (OSError, ValueError) as exc:
            reason = f"channel error: {exc}"
        finally:
            self._fail(reason)

    def _drain(self, buf: bytearray, waiting: dict | None) -> dict | None:
        """Deliver every whole message in ``buf`` (consuming it); the one still short of payload bytes, if any."""
        while True:
            if waiting is None:
                if len(buf) < 4 or len(buf) < 4 + (size := struct.unpack(">I", buf[:4])[0]):
                    return None
                waiting = json.loads(buf[4 : 4 + size])
                del buf[: 4 + size]
            need = waiting.get("size") or 0
            if len(buf) < need:
                return waiting
            if need:  # raw bytes after the JSON (a file chunk read back): no base64 to decode
                waiting["payload"] = bytes(buf[:need])
                del buf[:need]
            self._deliver(waiting)
            waiting = None

    def _deliver(self, message: dict) -> None:
        if message.get("op") == "hello":
            if not self.hello.done():
                self.hello.set_result(message)
            return
        future = self._pending.pop(message.get("id"), None)
        if future is not None and not future.done():
            future.set_result(message)

    def _fail(self, reason: str) -> None:
        with self._send_lock:
            self.error = self.error or reason
            pending, self._pending = self._pending, {}
        detail = self.stderr_tail.decode("utf-8", "replace").strip()
        message = f"{self.error}{f' (executor stderr: {detail[-2000:]})' if detail else ''}"
        for future in [self.hello, *pending.values()]:
            if not future.done():
                future.set_exception(ChannelClosed(message))

    @property
    def alive(self) -> bool:
        return self.error is None

    def submit(self, message: dict, payload: bytes = b"") -> tuple[int, concurrent.futures.Future]:
        """Send a request, then ``payload`` raw (its ``size`` told); returns its id and a future of the reply."""
        rid, future = next(self._ids), concurrent.futures.Future()
        extra = {"size": len(payload)} if payload else {}
        data = json.dumps({**message, **extra, "id": rid}).encode()
        with self._send_lock:
            if self.error is not None:
                raise ChannelClosed(self.error)
            self._pending[rid] = future
            try:
                self._sock.sendall(struct.pack(">I", len(data)) + data)
                if payload:
                    self._sock.sendall(payload)
            except OSError as exc:
                self._pending.pop(rid, None)
                raise ChannelClosed(f"could not reach the executor: {exc}") from exc
        return rid, future

    def forget(self, rid: int) -> None:
        """Stop waiting for a request's reply (one that came too late is dropped)."""
        self._pending.pop(rid, None)

    def cancel(self, rid: int) -> None:
        """Forget a request and ask the executor to kill its run."""
        self._pending.pop(rid, None)
        with contextlib.suppress(SandboxError):
            self.submit({"op": "cancel", "target": rid})

    def close(self) -> None:
        self.error = self.error or "the sandbox was closed"
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


# -- containers ---------------------------------------------------------------------------------------
