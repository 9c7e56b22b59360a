"""The docker sandbox backend: one locked-down container per sandbox, whose pid 1 is a warm executor.

A run is one JSON message over the container's attached stdio (see ``executor.py``), not a ``docker exec``.
Containers come from a process-wide ``DockerPool`` (warm spares, a hard cap on live containers) and carry
owner labels so ``reap_orphans`` can remove those of processes that died without cleaning up. Between users
``reset`` cleans the container in place (the executor kills, wipes and checks) or replaces it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath

from . import docker_transfer as transfer
from .base import Language, RunResult, Sandbox, SandboxConfig, SandboxError, Slot, isolated_request
from .docker_channel import ChannelClosed
from .docker_pool import (  # noqa: F401  (re-exported: the backend's public and test-facing names)
    _EXECUTOR_SOURCE,
    _FILE_TIMEOUT_S,
    _PING_TIMEOUT_S,
    _REPLY_CAP_S,
    _REPLY_GRACE_S,
    _START_TIMEOUT_S,
    EXECUTOR_MEMORY_MB,
    EXECUTOR_PIDS,
    SANDBOX_DIR,
    SANDBOX_USER,
    DockerPool,
    _Container,
    _Spec,
    default_pool,
    owner_labels,
    reap_orphans,
)

#: Stdin up to this size travels inside the run request; larger, it is staged first in chunks.
_INLINE_STDIN_BYTES = 1 << 20
#: A reset kills, waits for in-flight runs to wind down (4 s at most) and empties tmpfs: past this, replace.
_RESET_TIMEOUT_S = 20.0


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxError(f"invalid sandbox path {path!r}")
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise SandboxError(
            f"{path!r} escapes the sandbox: paths are relative to the working directory, no '..'"
        )


async def _watch(container: _Container, future: concurrent.futures.Future, limit: float) -> dict:
    """A run's reply, or TimeoutError once the executor is stuck: silent to a ping, or far past ``limit``.

    The executor kills a run at its limit and replies a moment later; a reply still missing after
    ``_REPLY_GRACE_S`` means a loaded executor or a stuck one, and a ping tells them apart.
    """
    reply = asyncio.wrap_future(future)
    hard_deadline = time.monotonic() + limit + _REPLY_CAP_S
    wait_s = limit + _REPLY_GRACE_S
    while True:
        await asyncio.wait({reply}, timeout=wait_s)
        if reply.done():
            return reply.result()
        if time.monotonic() >= hard_deadline:
            raise TimeoutError
        rid, pong = container.channel.submit({"op": "ping"})
        answered = asyncio.wrap_future(pong)
        await asyncio.wait({reply, answered}, timeout=_PING_TIMEOUT_S)
        container.channel.forget(rid)
        if reply.done():
            return reply.result()
        if not answered.done():
            answered.cancel()
            raise TimeoutError
        if (closed := answered.exception()) is not None:  # ChannelClosed: the executor is gone
            raise closed
        wait_s = min(_REPLY_GRACE_S, max(0.0, hard_deadline - time.monotonic()))


class DockerSandbox(Sandbox):
    """Runs programs in a locked-down container (no network, read-only root, uid 65534, cgroup limits).

    Its place under the cap belongs to its container (``DockerPool``: a warm spare holds one already), so a
    ``slot`` given here goes to the pool, which uses it for a new container or gives it back.
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, slot: Slot | None = None, pool: DockerPool | None = None
    ):
        self.config = config or SandboxConfig()
        self._closed = True  # until a container is held there is nothing to close
        self._pool = pool or default_pool()
        self._swap_lock = threading.Lock()
        self._wrote_to: _Container | None = None  # the container that write_files last wrote into
        self._container: _Container = self._pool.acquire(_Spec.of(self.config), slot=slot)
        self._closed = False

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
        isolated: bool = False,
    ) -> RunResult:
        """Run ``code`` as a ``language`` program in ``/sandbox`` and report how it ended."""
        self._check_open()
        limit = self._run_limit(language, timeout)
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
        inline = data is not None and len(data) <= _INLINE_STDIN_BYTES
        stage = None if data is None or inline else os.urandom(8).hex()
        request = {
            "op": "run",
            "language": language,
            "code": code,
            "stdin": bool(inline),  # inline: the request's payload
            "stdin_stage": stage,
            "timeout": limit,
            "cap": cfg.max_output_bytes,
            "fsize": cfg.max_file_bytes,
            "env": {} if isolated else cfg.env,
            # The image's PATH: the executor adds its own.
            "isolated": isolated_request(language, None) if isolated else None,
        }
        try:
            if stage is not None:
                assert data is not None
                staging = asyncio.ensure_future(
                    asyncio.to_thread(transfer.stage_stdin, container.channel, stage, data, _FILE_TIMEOUT_S)
                )
                try:
                    await asyncio.shield(staging)
                except asyncio.CancelledError:
                    # The thread still sends its chunks: drop the staged stdin once it is done.
                    staging.add_done_callback(lambda _: transfer.unstage(container.channel, stage))
                    raise
            payload = data if inline and data else b""
            if len(code) + len(payload) > 1 << 16:
                rid, future = await asyncio.to_thread(container.channel.submit, request, payload)
            else:
                rid, future = container.channel.submit(request, payload)
        except transfer.ExecutorHung as exc:
            return self._lost(container, str(exc), started, kill=True)
        except SandboxError as exc:  # ChannelClosed included
            return self._lost(container, str(exc), started)
        try:
            reply = await _watch(container, future, limit)
        except TimeoutError:
            container.channel.forget(rid)
            return self._lost(container, "the executor stopped answering", started, kill=True)
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

    def _lost(self, container: _Container, why: str, started: float, kill: bool = False) -> RunResult:
        container.broken = True  # the next run gets a fresh container
        if kill:  # a hung executor cannot end the run's programs: the container goes now, with them
            threading.Thread(target=self._pool.kill, args=(container,), daemon=True).start()
        if self._closed:
            why = "the sandbox was closed during the run"
        return RunResult(
            "sandbox_error",
            stderr=f"the sandbox container failed: {why}",
            duration_s=time.monotonic() - started,
        )

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files (paths relative to ``/sandbox``) for later runs to read; an error names what was not."""
        self._check_open()
        limit, checked = self.config.max_file_bytes, []
        for path, content in files.items():
            _check_path(path)
            data = content.encode() if isinstance(content, str) else bytes(content)
            if len(data) > limit:
                raise SandboxError(f"{path!r} is {len(data)} bytes, over the {limit}-byte file limit")
            checked.append((path, data))
        container, written = self._usable_container(), set[str]()
        try:
            self._transfer(container, transfer.write_files, checked, limit, written)
        except (SandboxError, OSError) as exc:
            if written:
                self._wrote_to = container
            # Chunks go in order, so the first file not written whole is the one whose request failed.
            path = next(p for p, _ in checked if p not in written)
            done = ", ".join(repr(p) for p, _ in checked if p in written) or "none"
            rest = ", ".join(repr(p) for p, _ in checked if p not in written and p != path) or "none"
            gone = " (the container was lost: files written before are gone too)" if container.broken else ""
            raise type(exc)(
                f"{path!r} was not written: {exc}{gone}; written: {done}; not written: {rest}"
            ) from exc
        self._wrote_to = container

    def read_bytes(self, path: str) -> bytes:
        """Return the bytes of a file in ``/sandbox`` (at most ``max_file_mb``)."""
        self._check_open()
        _check_path(path)
        container = self._usable_container()
        try:
            return self._transfer(container, transfer.read_file, path, self.config.max_file_bytes)
        except FileNotFoundError as exc:
            if self._wrote_to is not None and self._wrote_to is not container:
                raise FileNotFoundError(
                    f"{exc} (files written earlier are gone: the sandbox's container failed and was replaced)"
                ) from exc
            raise

    def _transfer(self, container: _Container, move: Callable, *args: object) -> object:
        """``move(channel, *args, timeout)``; a hung executor's container is killed, a dead one replaced later."""
        try:
            return move(container.channel, *args, _FILE_TIMEOUT_S)
        except transfer.ExecutorHung:
            self._pool.kill(container)
            raise
        except ChannelClosed:
            container.broken = True
            raise

    def reset(self) -> None:
        """Make the sandbox as good as new: every process killed, every writable place emptied, checked.

        The executor reports what it could not clean (a process that outran the kills, a file it could not
        remove, a bound socket, tmpfs pages still used); then, or when it does not answer, the container is
        replaced, so the next user never sees the last one's state.
        """
        self._check_open()
        container = self._container
        dirt = ["the executor is gone"] if not container.usable else self._reset_in(container)
        self._wrote_to = None
        if dirt:
            with self._swap_lock:
                self._container = self._pool.replace(container, why="; ".join(dirt))

    def _reset_in(self, container: _Container) -> list[str]:
        """Ask the executor to reset; what it found still dirty (a lost executor counts as dirt)."""
        rid, future = container.channel.submit({"op": "reset"})
        try:
            reply = future.result(_RESET_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            container.channel.forget(rid)
            container.broken = True
            return ["the executor did not answer the reset"]
        except ChannelClosed as exc:
            return [str(exc)]
        return [] if reply.get("clean") is True else [str(d) for d in reply.get("dirt") or ["not clean"]]

    async def aclose(self) -> None:
        """``close`` without blocking the event loop (removing a container takes a daemon round trip)."""
        await asyncio.to_thread(self.close)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Kill running programs and remove the container; calling it again does nothing."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._pool.release(self._container)

    def __repr__(self) -> str:
        cid = getattr(getattr(self, "_container", None), "id", "")[:12]
        return f"DockerSandbox(image={self.config.image!r}, container={cid!r}, closed={self._closed})"
