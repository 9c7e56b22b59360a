"""The docker sandbox backend: one locked-down container per sandbox, whose pid 1 is a warm executor.

A run is one JSON message over the container's attached stdio (see ``executor.py``), not a ``docker exec``.
Containers come from a process-wide ``DockerPool`` (warm spares, a hard cap on live containers) and carry
owner labels so ``reap_orphans`` can remove those of processes that died without cleaning up.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Mapping
from pathlib import PurePosixPath

from .base import Language, RunResult, Sandbox, SandboxConfig, SandboxError
from .docker_channel import ChannelClosed
from .docker_pool import (  # noqa: F401  (re-exported: the backend's public and test-facing names)
    _EXECUTOR_SOURCE,
    _FILE_TIMEOUT_S,
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

#: Error kinds the executor reports, as the exceptions a local sandbox would raise.
_ERRORS = {"not_found": FileNotFoundError}


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
        request = {
            "op": "run",
            "language": language,
            "code": code,
            "stdin": None if data is None else base64.b64encode(data).decode(),
            "timeout": limit,
            "cap": cfg.max_output_bytes,
            "fsize": cfg.max_file_bytes,
            "env": {} if isolated else cfg.env,
            "isolated": isolated,
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
