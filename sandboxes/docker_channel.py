"""The host end of the docker executor's channel: length-prefixed JSON over the container's attach socket."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from typing import Any

from .base import SandboxError
from .owner import local_dir_prefix


def _recv_exact(sock: socket.socket, size: int) -> bytearray | None:
    """Exactly ``size`` bytes from ``sock``, or None at its end."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buf


class ChannelClosed(SandboxError):
    """The executor's channel ended: the container or its executor died, or the sandbox was closed."""


class _Channel:
    """Length-prefixed JSON over a container's attached stdio; a reader thread matches replies to requests.

    Once the executor has connected its *lane* (a unix socket bind-mounted from the host, ``use_lane``),
    messages travel there instead: no daemon in the path. The attach stream then carries only the executor's
    stderr, and its end still means the executor is gone.
    """

    def __init__(self, sock: socket.socket, name: str):
        self._sock = sock
        self._out = sock  # where requests go: the attach socket, or the lane once connected
        self._lane: socket.socket | None = None
        self._name = name
        self._send_lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self.hello: concurrent.futures.Future = concurrent.futures.Future()
        self.error: str | None = None
        self.stderr_tail = b""
        threading.Thread(target=self._read_loop, name=f"aligngym-docker-{name}", daemon=True).start()

    def _read_loop(self) -> None:
        reason, buf = "the executor closed its channel", bytearray()
        waiting: dict | None = None  # a message whose raw payload has not all arrived yet
        try:
            # Docker multiplexes a non-tty container's output: 8-byte headers (stream, size) before each chunk.
            while (header := _recv_exact(self._sock, 8)) is not None:
                payload = _recv_exact(self._sock, struct.unpack(">I", header[4:])[0]) or b""
                if header[0] == 2:
                    self.stderr_tail = (self.stderr_tail + payload)[-8192:]
                    continue
                buf += payload
                waiting = self._drain(buf, waiting)
        except (OSError, ValueError) as exc:
            reason = f"channel error: {exc}"
        finally:
            self._fail(reason)

    def use_lane(self, lane: socket.socket) -> None:
        """Send and receive messages over ``lane`` from now on (the executor has switched to it)."""
        with self._send_lock:
            self._lane = self._out = lane
        threading.Thread(target=self._lane_loop, name=f"aligngym-lane-{self._name}", daemon=True).start()

    def _lane_loop(self) -> None:
        # No docker framing here: read each message straight into buffers of its size (one copy, no joins).
        assert self._lane is not None
        reason = "the executor closed its lane"
        try:
            while (header := _recv_exact(self._lane, 4)) is not None:
                body = _recv_exact(self._lane, struct.unpack(">I", header)[0])
                message = json.loads(body or b"{}")
                if need := message.get("size"):
                    if (payload := _recv_exact(self._lane, need)) is None:
                        break
                    message["payload"] = payload
                self._deliver(message)
        except (OSError, ValueError) as exc:
            reason = f"lane error: {exc}"
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
                self._out.sendall(struct.pack(">I", len(data)) + data)
                if payload:
                    self._out.sendall(payload)
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
        for sock in filter(None, (self._lane, self._sock)):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Lane:
    """A listening unix socket in a host directory that a container gets bind-mounted at ``MOUNT``.

    The executor connects before any program runs and proves itself with the token it sent in its hello
    over the attach stream (which only the host reads); the listener then goes, so nothing else connects.
    """

    MOUNT = "/run/aligngym"
    NAME = "lane.sock"
    TOKEN_BYTES = 32  # hex of 16 random bytes

    def __init__(self, base: str | None = None) -> None:
        # Named like a local sandbox's directory: if we die before close(), the local reaper removes it.
        self.dir = tempfile.mkdtemp(prefix=local_dir_prefix() + "lane-", dir=base)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.chmod(self.dir, 0o711)  # the container's uid (65534) must reach the socket, and list nothing
            path = os.path.join(self.dir, self.NAME)
            self._listener.bind(path)  # OSError for a path over 107 bytes (a deep $TMPDIR)
            os.chmod(path, 0o666)
            self._listener.listen(4)
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_daemon(cls, client: Any) -> Lane | None:
        """A lane when the daemon shares this machine's files (a unix socket, ``$ALIGNGYM_DOCKER_LANE`` not 0)."""
        if os.environ.get("ALIGNGYM_DOCKER_LANE", "1") == "0":
            return None
        if not str(getattr(client.api, "base_url", "")).startswith("http+docker://"):
            return None  # tcp/ssh: the daemon's bind mount would name a path on another machine
        for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):  # /tmp when $TMPDIR is too deep
            with contextlib.suppress(OSError):
                return cls(base)
        return None

    def binds(self) -> dict:
        return {self.dir: {"bind": self.MOUNT, "mode": "ro"}}

    def accept(self, token: str, timeout: float) -> socket.socket:
        """The executor's connection: the first whose opening bytes are ``token``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._listener.settimeout(left)
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                break
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            got = b""
            with contextlib.suppress(OSError):
                while len(got) < self.TOKEN_BYTES and (part := conn.recv(self.TOKEN_BYTES - len(got))):
                    got += part
            if got == token.encode():
                conn.settimeout(None)
                return conn
            conn.close()
        raise SandboxError("the executor did not connect its lane")

    def close(self) -> None:
        """Stop listening and remove the directory (a connected lane lives on)."""
        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
