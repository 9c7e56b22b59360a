"""The docker sandbox backend: one locked-down container per sandbox, whose pid 1 is a warm executor.

A run is one JSON message over the container's attached stdio (see ``executor.py``), not a ``docker exec``.
Containers come from a process-wide ``DockerPool`` (warm spares, a hard cap on live containers) and carry
owner labels so ``reap_orphans`` can remove those of processes that died without cleaning up.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .base import LANGUAGES, Language, RunResult, Sandbox, SandboxConfig, SandboxError
from .pool import register_idle_source, release_slot, try_acquire_slot

SANDBOX_DIR = "/sandbox"
SANDBOX_USER = "65534:65534"
#: Added to ``SandboxConfig.pids`` and ``memory_mb`` for the executor (pid 1) that shares the container's cgroup.
EXECUTOR_PIDS = 8
EXECUTOR_MEMORY_MB = 32
_EXECUTOR_SOURCE = Path(__file__).with_name("executor.py").read_text()
_START_TIMEOUT_S = 60.0
_SLOT_POLL_S = 0.2
_REPLY_GRACE_S = 15.0  # past a run's own limit before the executor counts as hung
_FILE_TIMEOUT_S = 120.0
_ERRORS = {"not_found": FileNotFoundError}


class ChannelClosed(SandboxError):
    """The executor's channel ended: the container or its executor died, or the sandbox was closed."""


# -- owner identity and the reaper -------------------------------------------------------------------
def _start_stamp(pid: int) -> str | None:
    """``boot_id:start_ticks`` of a process (pid reuse gives another stamp), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat[stat.rindex(b')') + 2 :].split()[19].decode()}"


def owner_labels() -> dict[str, str]:
    """The labels every container of this process carries."""
    return {
        "aligngym": "1",
        "aligngym.owner_pid": str(os.getpid()),
        "aligngym.owner_host": socket.gethostname(),
        "aligngym.owner_start": _start_stamp(os.getpid()) or "",
    }


def _owner_alive(labels: Mapping[str, str]) -> bool:
    try:
        pid = int(labels.get("aligngym.owner_pid", ""))
    except ValueError:
        return False
    stamp = _start_stamp(pid)
    return stamp is not None and stamp == labels.get("aligngym.owner_start")


def reap_orphans(client: Any = None) -> int:
    """Remove aligngym containers on this host whose owner process is gone (or its pid was reused); how many."""
    import docker

    client = client or _client()
    host = socket.gethostname()
    removed = 0
    filters = {"label": ["aligngym=1", f"aligngym.owner_host={host}"]}
    for info in client.api.containers(all=True, filters=filters):
        if _owner_alive(info.get("Labels") or {}):
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(info["Id"], force=True)
            removed += 1
    return removed


def _client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise SandboxError(f"cannot reach the Docker daemon ({exc}); start it (e.g. .ci/dockerd.sh)") from exc
    return client


# -- the channel to one executor ---------------------------------------------------------------------
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
        try:
            # Docker multiplexes a non-tty container's output: 8-byte headers (stream, size) before each chunk.
            while (header := self._recv_exact(8)) is not None:
                payload = self._recv_exact(struct.unpack(">I", header[4:])[0]) or b""
                if header[0] == 2:
                    self.stderr_tail = (self.stderr_tail + payload)[-8192:]
                    continue
                buf += payload
                while len(buf) >= 4 and len(buf) >= 4 + (size := struct.unpack(">I", buf[:4])[0]):
                    self._deliver(json.loads(buf[4 : 4 + size]))
                    del buf[: 4 + size]
        except (OSError, ValueError) as exc:
            reason = f"channel error: {exc}"
        finally:
            self._fail(reason)

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

    def submit(self, message: dict) -> tuple[int, concurrent.futures.Future]:
        """Send a request; returns its id and a future of the reply."""
        rid, future = next(self._ids), concurrent.futures.Future()
        data = json.dumps({**message, "id": rid}).encode()
        with self._send_lock:
            if self.error is not None:
                raise ChannelClosed(self.error)
            self._pending[rid] = future
            try:
                self._sock.sendall(struct.pack(">I", len(data)) + data)
            except OSError as exc:
                self._pending.pop(rid, None)
                raise ChannelClosed(f"could not reach the executor: {exc}") from exc
        return rid, future

    def call(self, message: dict, timeout: float) -> dict:
        """Send a request and wait for its reply."""
        rid, future = self.submit(message)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._pending.pop(rid, None)
            raise SandboxError(f"the executor did not answer {message['op']!r} in {timeout:.0f}s") from None

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
@dataclass(frozen=True)
class _Spec:
    """What fixes a container at creation; sandboxes with equal specs can take each other's warm spares."""

    image: str
    memory_mb: int
    cpus: float
    pids: int
    network: bool

    @classmethod
    def of(cls, config: SandboxConfig) -> _Spec:
        return cls(config.image, config.memory_mb, config.cpus, config.pids, config.network)


class _Container:
    def __init__(self, cid: str, channel: _Channel, spec: _Spec):
        self.id, self.channel, self.spec = cid, channel, spec
        self.broken = False

    @property
    def usable(self) -> bool:
        return not self.broken and self.channel.alive


def _own_socket(raw: Any) -> socket.socket:
    sock = getattr(raw, "_sock", raw)
    if not isinstance(sock, socket.socket) or hasattr(sock, "getpeercert"):
        raise SandboxError("the docker backend needs a unix or plain tcp Docker socket (not TLS or ssh)")
    # A socket of our own on a duplicate descriptor: whatever docker-py does with its objects cannot close it.
    own = sock.dup()
    own.setblocking(True)
    raw.close()
    return own


def _start(client: Any, spec: _Spec) -> _Container:
    """Create and start one container and wait for its executor's hello."""
    import docker

    memory = (spec.memory_mb + EXECUTOR_MEMORY_MB) << 20
    tmpfs_size = f"size={spec.memory_mb}m,exec,nosuid,nodev"
    host_config = client.api.create_host_config(
        network_mode="bridge" if spec.network else "none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs={SANDBOX_DIR: f"{tmpfs_size},uid=65534,gid=65534,mode=0700", "/tmp": f"{tmpfs_size},mode=1777"},
        mem_limit=memory,
        memswap_limit=memory,
        nano_cpus=int(spec.cpus * 1e9),
        pids_limit=spec.pids + EXECUTOR_PIDS,
        auto_remove=True,
    )
    try:
        cid = client.api.create_container(
            spec.image,
            entrypoint=["python3", "-I", "-S", "-c", _EXECUTOR_SOURCE],
            user=SANDBOX_USER,
            working_dir=SANDBOX_DIR,
            hostname="sandbox",
            stdin_open=True,  # with attach: StdinOnce, so our socket closing is the executor's EOF
            labels=owner_labels(),
            host_config=host_config,
        )["Id"]
    except docker.errors.ImageNotFound as exc:
        raise SandboxError(
            f"docker image {spec.image!r} not found; build it with `aligngym sandbox build` "
            "(aligngym.sandboxes.docker_image.ensure_image) or pass image= a local image with python3"
        ) from exc
    except docker.errors.APIError as exc:
        raise SandboxError(f"could not create the sandbox container: {exc}") from exc
    try:
        # Attached before start, so nothing the executor writes can be missed.
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        channel = _Channel(_own_socket(client.api.attach_socket(cid, params=params)), cid[:12])
        client.api.start(cid)
        if not channel.hello.result(_START_TIMEOUT_S).get("undumpable"):
            # Else a program could open /proc/1/fd/1 and forge replies (ctypes is missing from the image?).
            raise SandboxError(f"the executor in {spec.image!r} could not make itself undumpable")
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client.api.remove_container(cid, force=True)
        if isinstance(exc, Exception) and not isinstance(exc, SandboxError):
            raise SandboxError(f"the sandbox container did not start: {exc}") from exc
        raise
    return _Container(cid, channel, spec)


class DockerPool:
    """Warm spare containers per spec plus a hard cap on live containers (spares, in use and starting).

    ``size`` spares per spec (``$ALIGNGYM_DOCKER_POOL``, default 2); ``max_live`` containers at most
    (``$ALIGNGYM_MAX_SANDBOXES``, default 32): ``acquire`` past it waits until one is released.
    """

    def __init__(self, size: int | None = None, max_live: int | None = None, client: Any = None):
        self.size = int(os.environ.get("ALIGNGYM_DOCKER_POOL", 2)) if size is None else size
        self.max_live = int(os.environ.get("ALIGNGYM_MAX_SANDBOXES", 32)) if max_live is None else max_live
        if self.max_live < 1 or self.size < 0:
            raise ValueError(
                f"DockerPool needs max_live >= 1 and size >= 0, got {self.max_live}, {self.size}"
            )
        self._client = client
        self._cond = threading.Condition()
        self._live = 0
        self._spares: dict[_Spec, list[_Container]] = {}
        self._filling: dict[_Spec, threading.Thread] = {}
        self._all: dict[str, _Container] = {}
        self._closed = False
        atexit.register(self.shutdown)
        register_idle_source(self._has_spare, self._evict_spare)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
            reap_orphans(self._client)  # the first use in a process clears what dead processes left
        return self._client

    @property
    def live(self) -> int:
        """Containers counted against ``max_live`` now."""
        return self._live

    def acquire(self, spec: _Spec, timeout: float | None = None) -> _Container:
        """A started container for ``spec``: a warm spare if any, else a new one once the cap allows it."""
        client, deadline = self.client, None if timeout is None else time.monotonic() + timeout
        evicted = None
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the docker pool is shut down")
                while self._spares.get(spec):
                    spare = self._spares[spec].pop()
                    if spare.usable:
                        self._refill(spec)
                        return spare
                    self._discard(spare)
                if self._live < self.max_live and try_acquire_slot():
                    self._live += 1
                    break
                if other := next((s for s in self._spares.values() if s), None):
                    evicted = other.pop()  # its slot becomes ours
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise SandboxError(f"no sandbox slot freed within {timeout}s (max_live={self.max_live})")
                # Slots also free up when other backends' sandboxes close, which does not notify us: poll.
                self._cond.wait(_SLOT_POLL_S if left is None else min(left, _SLOT_POLL_S))
        if evicted is not None:
            self._remove(evicted)
        try:
            container = self._create(client, spec)
        except BaseException:
            self._give_back()
            raise
        with self._cond:
            self._refill(spec)
        return container

    def _create(self, client: Any, spec: _Spec) -> _Container:
        """Start a container in a slot the caller has already counted."""
        container = _start(client, spec)
        with self._cond:
            if not self._closed:
                self._all[container.id] = container
                return container
        self._remove(container)  # shut down while it started
        raise SandboxError("the docker pool is shut down")

    def _give_back(self) -> None:
        with self._cond:
            self._live -= 1
            self._cond.notify_all()
        release_slot()

    def _has_spare(self) -> bool:
        # Called by the global cap with its lock held: read without our lock (a stale answer only costs a retry).
        return any(self._spares.values())

    def _evict_spare(self) -> bool:
        """Remove one warm spare so a sandbox of any backend can take its slot; False when none is left."""
        with self._cond:
            spare = next((s.pop() for s in self._spares.values() if s), None)
        if spare is None:
            return False
        self._remove(spare)
        self._give_back()
        return True

    def _refill(self, spec: _Spec) -> None:
        """Start spares for ``spec`` in the background while the cap leaves room (call with the lock held)."""
        if self.size and spec not in self._filling and not self._closed:
            thread = threading.Thread(
                target=self._fill, args=(spec,), name="aligngym-docker-pool", daemon=True
            )
            self._filling[spec] = thread
            thread.start()

    def _fill(self, spec: _Spec) -> None:
        try:
            while True:
                with self._cond:
                    if (
                        self._closed
                        or len(self._spares.get(spec, ())) >= self.size
                        or self._live >= self.max_live
                        or not try_acquire_slot()
                    ):
                        return
                    self._live += 1
                try:
                    container = self._create(self.client, spec)
                except SandboxError:
                    self._give_back()
                    return  # the next acquire starts its container itself and reports the error
                with self._cond:
                    self._spares.setdefault(spec, []).append(container)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._filling.pop(spec, None)

    def replace(self, container: _Container) -> _Container:
        """Remove a broken container and start a fresh one for the same spec in its slot (kept even on failure)."""
        self._remove(container)
        return self._create(self.client, container.spec)

    def release(self, container: _Container) -> None:
        """Remove a sandbox's container (never reused: its files and processes are the last user's) and free its slot."""
        self._remove(container)
        self._give_back()

    def _discard(self, container: _Container) -> None:
        # A dead spare, found with the lock held: its slot is freed and the removal happens elsewhere.
        self._live -= 1
        self._cond.notify_all()
        release_slot()
        threading.Thread(target=self._remove, args=(container,), daemon=True).start()

    def _remove(self, container: _Container) -> None:
        import docker

        container.channel.close()
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.client.api.remove_container(container.id, force=True)
        with self._cond:
            self._all.pop(container.id, None)

    def shutdown(self) -> None:
        """Remove every container of this pool (spares and those of open sandboxes)."""
        with self._cond:
            self._closed = True
            filling = list(self._filling.values())
        for thread in filling:
            thread.join(_START_TIMEOUT_S)  # a spare still starting would outlive us as a stopped container
        with self._cond:
            containers = list(self._all.values())
            self._spares.clear()
        for container in containers:
            container.channel.close()  # the executor sees EOF and exits, and auto_remove takes the container
        # Then one by one (no threads: this runs at exit) for executors that cannot see EOF (paused, hung).
        for container in containers:
            self._remove(container)


_default_pool: DockerPool | None = None
_default_lock = threading.Lock()


def default_pool() -> DockerPool:
    """The process-wide pool (created on first use; its containers are removed at exit)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = DockerPool()
        return _default_pool


# -- the sandbox --------------------------------------------------------------------------------------
def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxError(f"invalid sandbox path {path!r}")
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise SandboxError(
            f"{path!r} escapes the sandbox: paths are relative to the working directory, no '..'"
        )


def _raise_for(reply: dict) -> dict:
    if error := reply.get("error"):
        raise _ERRORS.get(error["kind"], SandboxError)(error["message"])
    return reply


class DockerSandbox(Sandbox):
    """Runs programs in a locked-down container (no network, read-only root, uid 65534, cgroup limits)."""

    def __init__(self, config: SandboxConfig | None = None, *, pool: DockerPool | None = None):
        self.config = config or SandboxConfig()
        self._closed = True  # until a container is held there is nothing to close
        self._pool = pool or default_pool()
        self._swap_lock = threading.Lock()
        self._container: _Container = self._pool.acquire(_Spec.of(self.config))
        self._closed = False

    @classmethod
    async def acreate(
        cls, config: SandboxConfig | None = None, *, pool: DockerPool | None = None
    ) -> DockerSandbox:
        """Create a sandbox without blocking the event loop (waiting for a slot under the cap included)."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def create() -> None:
            try:
                sandbox = cls(config, pool=pool)
            except BaseException as exc:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    done.set_exception(exc)
                return
            try:
                done.set_result(sandbox)
            except concurrent.futures.InvalidStateError:
                sandbox.close()  # the caller gave up waiting

        # A thread of its own, not the loop's executor: asyncio.run would wait for it at exit, even if cancelled.
        threading.Thread(target=create, name="aligngym-docker-create", daemon=True).start()
        return await asyncio.wrap_future(done)

    @property
    def container_id(self) -> str:
        """The id of the container now backing this sandbox."""
        return self._container.id

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")

    def _usable_container(self) -> _Container:
        """The container, replaced first (a clean working directory) if its executor died."""
        with self._swap_lock:
            self._check_open()
            if not self._container.usable:
                self._container = self._pool.replace(self._container)
            return self._container

    async def arun(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``code`` as a ``language`` program in ``/sandbox`` and report how it ended."""
        self._check_open()
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        limit = self.config.timeout if timeout is None else float(timeout)
        if limit <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        container = self._container
        if not container.usable:
            try:
                container = await asyncio.to_thread(self._usable_container)
            except SandboxError as exc:
                return RunResult(
                    "sandbox_error", stderr=f"the sandbox container could not be replaced: {exc}"
                )
        data = stdin.encode() if isinstance(stdin, str) else stdin
        cfg, started = self.config, time.monotonic()
        request = {
            "op": "run",
            "language": language,
            "code": code,
            "stdin": None if data is None else base64.b64encode(data).decode(),
            "timeout": limit,
            "cap": cfg.max_output_bytes,
            "fsize": cfg.max_file_bytes,
            "env": cfg.env,
        }
        try:
            if len(code) + len(data or b"") > 1 << 16:
                rid, future = await asyncio.to_thread(container.channel.submit, request)
            else:
                rid, future = container.channel.submit(request)
        except ChannelClosed as exc:
            return self._lost(container, str(exc), started)
        try:
            reply = await asyncio.wait_for(asyncio.wrap_future(future), limit + _REPLY_GRACE_S)
        except TimeoutError:
            return self._lost(container, "the executor did not answer", started)
        except ChannelClosed as exc:
            return self._lost(container, str(exc), started)
        except asyncio.CancelledError:
            container.channel.cancel(rid)
            raise
        return RunResult(
            status=reply["status"],
            stdout=base64.b64decode(reply.get("stdout", "")).decode("utf-8", "replace"),
            stderr=base64.b64decode(reply.get("stderr", "")).decode("utf-8", "replace"),
            exit_code=reply.get("exit_code"),
            duration_s=reply.get("duration_s", time.monotonic() - started),
            truncated=reply.get("truncated", False),
        )

    def _lost(self, container: _Container, why: str, started: float) -> RunResult:
        container.broken = True  # the next run gets a fresh container
        if self._closed:
            why = "the sandbox was closed during the run"
        return RunResult(
            "sandbox_error",
            stderr=f"the sandbox container failed: {why}",
            duration_s=time.monotonic() - started,
        )

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files (paths relative to ``/sandbox``) for later runs to read."""
        self._check_open()
        limit, encoded = self.config.max_file_bytes, []
        for path, content in files.items():
            _check_path(path)
            data = content.encode() if isinstance(content, str) else bytes(content)
            if len(data) > limit:
                raise SandboxError(f"{path!r} is {len(data)} bytes, over the {limit}-byte file limit")
            encoded.append([path, base64.b64encode(data).decode()])
        request = {"op": "write", "files": encoded, "max_bytes": limit}
        _raise_for(self._usable_container().channel.call(request, _FILE_TIMEOUT_S))

    def read_bytes(self, path: str) -> bytes:
        """Return the bytes of a file in ``/sandbox`` (at most ``max_file_mb``)."""
        self._check_open()
        _check_path(path)
        request = {"op": "read", "path": path, "max_bytes": self.config.max_file_bytes}
        return base64.b64decode(
            _raise_for(self._usable_container().channel.call(request, _FILE_TIMEOUT_S))["data"]
        )

    def close(self) -> None:
        """Kill running programs and remove the container; calling it again does nothing."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._pool.release(self._container)

    def __repr__(self) -> str:
        cid = getattr(getattr(self, "_container", None), "id", "")[:12]
        return f"DockerSandbox(image={self.config.image!r}, container={cid!r}, closed={self._closed})"
