"""Docker containers for sandboxes: start, label, pool warm spares under the global cap, reap orphans."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import SandboxConfig, SandboxError, Slot
from .cap import register_idle_source, try_acquire_slot
from .docker_channel import Lane, _Channel
from .owner import start_stamp
from .reaper import reap_local_orphans_once

SANDBOX_DIR = "/sandbox"
SANDBOX_USER = "65534:65534"
#: Added to ``SandboxConfig.pids`` and ``memory_mb`` for the executor (pid 1) and its fork server, which share
#: the container's cgroup.
EXECUTOR_PIDS = 10
EXECUTOR_MEMORY_MB = 48
_EXECUTOR_SOURCE = Path(__file__).with_name("executor.py").read_text()
_ZYGOTE_SOURCE = Path(__file__).with_name("docker_zygote.py").read_text()


def executor_source() -> str:
    """The executor's program: with the fork server's source in front unless ``ALIGNGYM_DOCKER_ZYGOTE=0``."""
    if os.environ.get("ALIGNGYM_DOCKER_ZYGOTE", "1") == "0":
        return _EXECUTOR_SOURCE
    return f"ZYGOTE_SOURCE = {_ZYGOTE_SOURCE!r}\n{_EXECUTOR_SOURCE}"


_START_TIMEOUT_S = 60.0
_SLOT_POLL_S = 0.2
_REPLY_GRACE_S = 3.0  # past a run's own limit before the host asks whether the executor still answers
_PING_TIMEOUT_S = 2.0  # a live executor answers a ping at once; silence this long means it is stuck
_REPLY_CAP_S = 15.0  # past a run's limit, even an executor that answers pings counts as hung
_FILE_TIMEOUT_S = 30.0  # for one chunk of a file transfer (at most a few MiB)
_REPLACED_KEPT = 64


def owner_labels() -> dict[str, str]:
    """The labels every container of this process carries."""
    return {
        "aligngym": "1",
        "aligngym.owner_pid": str(os.getpid()),
        "aligngym.owner_host": socket.gethostname(),
        "aligngym.owner_start": start_stamp(os.getpid()) or "",
    }


def _owner_alive(labels: Mapping[str, str]) -> bool:
    try:
        pid = int(labels.get("aligngym.owner_pid", ""))
    except ValueError:
        return False
    stamp = start_stamp(pid)
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
    def __init__(self, cid: str, channel: _Channel, spec: _Spec, slot: Slot):
        self.id, self.channel, self.spec = cid, channel, spec
        self.slot = slot  # its place under the process-wide cap, given back when it is removed for good
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


def _start(client: Any, spec: _Spec, slot: Slot) -> _Container:
    """Create and start one container in ``slot`` and wait for its executor's hello."""
    lane = Lane.for_daemon(client)
    try:
        return _start_with(client, spec, slot, lane)
    finally:
        if lane is not None:
            lane.close()


def _start_with(client: Any, spec: _Spec, slot: Slot, lane: Lane | None) -> _Container:
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
        binds=lane.binds() if lane else None,
    )
    try:
        cid = client.api.create_container(
            spec.image,
            entrypoint=["python3", "-I", "-S", "-c", executor_source()],
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
        hello = channel.hello.result(_START_TIMEOUT_S)
        if not hello.get("undumpable"):
            # Else a program could open /proc/1/fd/1 and forge replies (ctypes is missing from the image?).
            raise SandboxError(f"the executor in {spec.image!r} could not make itself undumpable")
        if lane is not None and hello.get("lane"):
            channel.use_lane(lane.accept(hello["lane"], _START_TIMEOUT_S))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client.api.remove_container(cid, force=True)
        if isinstance(exc, Exception) and not isinstance(exc, SandboxError):
            raise SandboxError(f"the sandbox container did not start: {exc}") from exc
        raise
    return _Container(cid, channel, spec, slot)


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
        # Spares wanted per spec: ``size`` at first, one more each time a sandbox had to wait for a start.
        self._wanted: dict[_Spec, int] = {}
        self.replaced: list[str] = []  # why containers were replaced, latest last (diagnostics, tests)
        atexit.register(self.shutdown)
        register_idle_source(self)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
            reap_orphans(self._client)  # the first use in a process clears what dead processes left
            reap_local_orphans_once()  # lanes of containers that were starting when their owner died
        return self._client

    @property
    def live(self) -> int:
        """Containers counted against ``max_live`` now."""
        return self._live

    def acquire(self, spec: _Spec, timeout: float | None = None, slot: Slot | None = None) -> _Container:
        """A started container for ``spec``: a warm spare if any, else a new one once the cap allows it.

        ``slot``: a place under the cap already taken for it; a new container holds it, and taking a spare
        (which holds its own) gives it back.
        """
        client = self.client  # connects (and reaps what dead processes left) on first use, before any lock
        try:
            spare, slot = self._take(spec, timeout, slot)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if spare is not None:
            return spare
        with self._cond:  # demand outran the spares: keep more warm (the cap still bounds them)
            self._wanted[spec] = min(self.wanted(spec) + 1, self.max_live)
        try:
            container = self._create(client, spec, slot)
        except BaseException:
            self._give_back(slot)
            raise
        with self._cond:
            self._refill(spec)
        return container

    def _take(
        self, spec: _Spec, timeout: float | None, slot: Slot | None
    ) -> tuple[_Container, None] | tuple[None, Slot]:
        """A usable spare, or the slot (counted in ``live``) to start a container in; waits for either."""
        deadline = None if timeout is None else time.monotonic() + timeout
        evicted = None
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the docker pool is shut down")
                while self._spares.get(spec):
                    spare = self._spares[spec].pop()
                    if spare.usable:
                        self._refill(spec)
                        if slot is not None:
                            slot.release()  # the spare has its own
                        return spare, None
                    self._discard(spare)
                if self._live < self.max_live and (slot := slot or try_acquire_slot()) is not None:
                    self._live += 1
                    break
                if other := next((s for s in self._spares.values() if s), None):
                    evicted = other.pop()  # its place (in live and under the cap) becomes ours
                    if slot is not None:
                        slot.release()
                    slot = evicted.slot
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise SandboxError(f"no sandbox slot freed within {timeout}s (max_live={self.max_live})")
                # Slots also free up when other backends' sandboxes close, which does not notify us: poll.
                self._cond.wait(_SLOT_POLL_S if left is None else min(left, _SLOT_POLL_S))
        if evicted is not None:
            self._remove(evicted)
        return None, slot

    def _create(self, client: Any, spec: _Spec, slot: Slot) -> _Container:
        """Start a container in ``slot``, which the caller has already counted in ``live``."""
        container = _start(client, spec, slot)
        with self._cond:
            if not self._closed:
                self._all[container.id] = container
                return container
        self._remove(container)  # shut down while it started
        raise SandboxError("the docker pool is shut down")

    def _give_back(self, slot: Slot) -> None:
        """A container's place is free: one fewer ``live``, and its slot back to the cap."""
        with self._cond:
            self._live -= 1
            self._cond.notify_all()
        slot.release()

    # -- the cap's IdleSource --------------------------------------------------------------------------
    def has_idle(self) -> bool:
        """Whether a warm spare waits (called by the cap with its lock held: read without ours; a stale
        answer only costs a retry)."""
        return any(self._spares.values())

    def evict_one(self) -> bool:
        """Remove one warm spare so a sandbox of any backend can take its slot; False when none is left."""
        with self._cond:
            spare = next((s.pop() for s in self._spares.values() if s), None)
        if spare is None:
            return False
        self._remove(spare)
        self._give_back(spare.slot)
        return True

    # -- spares ----------------------------------------------------------------------------------------
    def _refill(self, spec: _Spec) -> None:
        """Start spares for ``spec`` in the background while the cap leaves room (call with the lock held)."""
        if self.size and spec not in self._filling and not self._closed:
            thread = threading.Thread(
                target=self._fill, args=(spec,), name="aligngym-docker-pool", daemon=True
            )
            self._filling[spec] = thread
            thread.start()

    def wanted(self, spec: _Spec) -> int:
        """How many warm spares of ``spec`` the pool keeps: ``size``, grown by demand up to ``max_live``."""
        return self._wanted.get(spec, self.size) if self.size else 0

    def _fill(self, spec: _Spec) -> None:
        try:
            while True:
                with self._cond:
                    if (
                        self._closed
                        or len(self._spares.get(spec, ())) >= self.wanted(spec)
                        or self._live >= self.max_live
                        or (slot := try_acquire_slot()) is None
                    ):
                        return
                    self._live += 1
                try:
                    container = self._create(self.client, spec, slot)
                except SandboxError:
                    self._give_back(slot)
                    return  # the next acquire starts its container itself and reports the error
                with self._cond:
                    self._spares.setdefault(spec, []).append(container)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._filling.pop(spec, None)

    def replace(self, container: _Container, why: str = "") -> _Container:
        """Remove a broken (or not cleanly reset: ``why``) container and start a fresh one for the same spec
        in its slot (kept on failure)."""
        with self._cond:
            self.replaced.append(why or "broken")
            del self.replaced[:-_REPLACED_KEPT]
        self._remove(container)
        return self._create(self.client, container.spec, container.slot)

    def kill(self, container: _Container) -> None:
        """SIGKILL a hung container's pid 1 now (every program in it dies too); it is removed when replaced."""
        import docker

        container.broken = True
        with contextlib.suppress(docker.errors.APIError):
            self.client.api.kill(container.id)

    def release(self, container: _Container) -> None:
        """Remove a closed sandbox's container and free its slot (reuse goes through ``DockerSandbox.reset``,
        which the sandbox pools call; a container given back here held another user's files)."""
        self._remove(container)
        self._give_back(container.slot)

    def _discard(self, container: _Container) -> None:
        # A dead spare, found with the lock held: its slot is freed and the removal happens elsewhere.
        self._live -= 1
        self._cond.notify_all()
        container.slot.release()
        threading.Thread(target=self._remove, args=(container,), daemon=True).start()

    def _remove(self, container: _Container) -> None:
        import docker

        container.channel.close()
        try:
            self.client.api.remove_container(container.id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            # 409 "removal already in progress": the executor saw EOF and auto_remove got there first.
            # Wait for it, so a closed sandbox's container is gone when close() returns.
            _wait_until_gone(self.client, container.id)
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


def _wait_until_gone(client: Any, container_id: str, timeout_s: float = 10.0) -> bool:
    """Poll until the daemon no longer knows the container; False if it is still there at the deadline."""
    import docker

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            pass
        time.sleep(0.02)
    return False


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
