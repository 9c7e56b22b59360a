"""The local sandbox backend: bubblewrap on this machine, or (unisolated, with a warning) a plain subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

from . import bwrap, limits
from .base import Language, RunResult, Sandbox, SandboxConfig, SandboxError, Slot, isolated_request
from .cap import acquire_slot
from .forkserver import (
    SERVER_SCRIPT,
    ForkServer,
    ServerGone,
    ServerStartError,
    ServerUnsupported,
    trusted_prelude,
)
from .owner import local_dir_prefix
from .reaper import reap_local_orphans_once
from .supervise import kill_tree, supervise
from .workdir import WorkDir, empty_dir, mount_tmpfs, remove_tree

_SUFFIX = {"python": ".py", "bash": ".sh"}
_NOFILE = 1024
_SERVER_START_TIMEOUT_S = 30.0
_warned_unisolated = False
#: Why the fork server cannot work on this host (set by the first failed probe), else None.
_fork_server_unsupported: str | None = None


@functools.lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """Whether bubblewrap is installed and a probe program runs in it (checked once per process)."""
    if bwrap.tools_missing(bwrap.mode()):
        return False
    try:
        probe = SandboxConfig(use_bwrap=True, timeout=30, fork_server=False)
        with LocalSandbox(probe, counted=False) as sandbox:
            return sandbox.run("pass").status == "ok"
    except (OSError, SandboxError):
        return False


def _warn_unisolated() -> None:
    global _warned_unisolated
    if not _warned_unisolated:
        _warned_unisolated = True
        warnings.warn(
            "aligngym local sandbox: bubblewrap is not available, so code runs NOT isolated (no network or "
            "filesystem isolation, only rlimits and a private working directory); install bubblewrap or use "
            "the docker backend before running untrusted code",
            RuntimeWarning,
            stacklevel=4,
        )


#: The sandbox's own mounts: an extra bind may not replace these (exact) or reach into those (trees).
_RESERVED_EXACT = ("/", "/tmp", "/run", "/dev/shm")
_RESERVED_TREES = ("/proc", "/dev", bwrap.SANDBOX_DIR, bwrap.CODE_DIR)


def _check_extra_paths(paths: list[str]) -> None:
    """Refuse ``extra_ro_paths`` that do not exist or would cover the sandbox's own mounts."""
    for path in paths:
        if not os.path.exists(path):
            raise SandboxError(f"SandboxConfig.extra_ro_paths: {path!r} does not exist on this host")
        norm = os.path.normpath(path)
        if norm in _RESERVED_EXACT or any(norm == r or norm.startswith(r + "/") for r in _RESERVED_TREES):
            raise SandboxError(f"SandboxConfig.extra_ro_paths: {path!r} would cover the sandbox's own mounts")


#: The server (and each run's init, which inherits it) is the OOM killer's last choice; programs volunteer
#: first (1000). Lowering needs CAP_SYS_RESOURCE: elsewhere the shell's write fails and nothing changes.
_SPARED_BY_OOM = ["/bin/sh", "-c", 'echo -1000 > /proc/self/oom_score_adj 2>/dev/null; exec "$@"', "sh"]


def _server_argv(ctl_fd: int, *, cgroup: limits.Cgroup | None, **options: Any) -> list[str]:
    argv = [*_SPARED_BY_OOM, *bwrap.server_argv(ctl_fd=ctl_fd, **options)]
    return cgroup.wrap(argv) if cgroup is not None else argv


def server_tmp_bytes(memory_mb: int) -> int:
    """Size of the one tmpfs behind a fork-server run's /tmp and /dev/shm: half the sandbox's memory.

    It is charged to the sandbox's memory cgroup, which the server and concurrent runs share; bounded so,
    a run that fills it gets ENOSPC (status ``memory``) and leaves room for the others.
    """
    return (memory_mb << 20) // 2


class LocalSandbox(Sandbox):
    """Runs programs on this machine: in bubblewrap when it works, else unisolated with one warning."""

    # With bubblewrap and ``fork_server`` (the default) a warm interpreter inside bwrap forks a pristine copy
    # of itself per run, each run in its own user, pid, mount and IPC namespaces (``forkserver``); else every
    # run starts a fresh bwrap and interpreter. Either way the working directory persists across runs and
    # nothing a run started outlives it. It holds ``slot`` (one a pool took for it) or takes its own under
    # the process-wide cap; ``counted=False`` keeps it out of the cap (internal probes only).

    def __init__(
        self, config: SandboxConfig | None = None, *, slot: Slot | None = None, counted: bool = True
    ):
        self.config = config or SandboxConfig()
        self._closed = False
        self._slot = slot
        self._root: str | None = None
        self._userns_fd: int | None = None
        self._pgids: set[int] = set()
        self._server: ForkServer | None = None
        self._server_lock = threading.Lock()
        #: How many fork servers this sandbox started (a restart after the server died adds one).
        self.server_starts = 0
        use_bwrap = bwrap_available() if self.config.use_bwrap is None else self.config.use_bwrap
        #: "userns" or "classic" (bubblewrap, see ``aligngym.sandboxes.bwrap``) or "none" (unisolated).
        self.mode = bwrap.mode() if use_bwrap else "none"
        self.isolated = self.mode != "none"
        if self.isolated and (missing := bwrap.tools_missing(self.mode)):
            raise SandboxError(f"use_bwrap=True but {', '.join(missing)} is not on PATH")
        #: Whether runs go through the warm fork server (False: a fresh bwrap, or a subprocess, per run).
        self.fork_server = self.isolated and self.config.fork_server and _fork_server_unsupported is None
        if counted and slot is None:
            self._slot = acquire_slot(self.config.slot_timeout)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        if not self.isolated:
            _warn_unisolated()

    def _setup(self) -> None:
        if self.isolated:
            _check_extra_paths(self.config.extra_ro_paths)
        if self.mode == "userns":
            try:
                self._userns_fd = bwrap.make_userns()
            except OSError as exc:
                raise SandboxError(f"could not create the sandbox's user namespace: {exc}") from exc
        reap_local_orphans_once()  # what processes killed earlier left behind
        self._root = tempfile.mkdtemp(prefix=local_dir_prefix())
        #: Host path of the working directory (``/sandbox`` inside bubblewrap).
        self.workdir = os.path.join(self._root, "work")
        self._code_dir = os.path.join(self._root, "code")
        os.mkdir(self.workdir, 0o700)
        os.mkdir(self._code_dir, 0o700)
        # In userns mode programs run as host uid 65534, which must own its working directory and our files.
        self._owner = (bwrap.SANDBOX_UID, bwrap.SANDBOX_UID) if self.mode == "userns" else None
        if self._owner:
            os.chown(self.workdir, *self._owner)
        # A tmpfs bounds the working directory as a whole (docker's /sandbox is one too); rlimits only cap
        # each file. Mounting needs root; elsewhere the directory stays a plain, unbounded host directory.
        self._workdir_bounded = mount_tmpfs(self.workdir, self.config.memory_mb << 20, self._owner)
        self._files = WorkDir(self.workdir, self.config.max_file_bytes, self._owner)
        self._cgroup_parent = limits.cgroup_parent()
        #: Which mechanism enforces each limit here ("none" where nothing does).
        self.limits_enforced = self._describe_limits()

    def _describe_limits(self) -> dict[str, str]:
        cgroup = self._cgroup_parent is not None
        described = limits.describe(
            self.mode, cgroup=cgroup, network=self.config.network, fork_server=self.fork_server
        )
        described["workdir_size"] = "tmpfs" if self._workdir_bounded else "none"
        return described

    # -- running -------------------------------------------------------------------------------------
    async def arun(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        isolated: bool = False,
    ) -> RunResult:
        """Run ``code`` as a ``language`` program in the working directory and report how it ended."""
        self._check_open()
        limit = self._run_limit(language, timeout)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        if self.fork_server:
            result = await self._run_forked(language, code, data, limit, isolated)
            if result is not None:
                return self._unless_closed(result)
        return await self._run_oneshot(language, code, data, limit, isolated)

    def _unless_closed(self, result: RunResult) -> RunResult:
        if self._closed:
            return RunResult(
                "sandbox_error", stderr="the sandbox was closed during the run", duration_s=result.duration_s
            )
        return result

    async def _run_forked(
        self, language: str, code: str, data: bytes | None, limit: float, isolated: bool
    ) -> RunResult | None:
        """Run through the fork server (started, or restarted, on demand); None when it is unsupported here."""
        cfg = self.config
        # Where the sandbox's cgroup enforces memory, no RLIMIT_AS: it counts address space, so each thread's
        # reserved stack, and a 512 MiB limit let a program start only a dozen threads.
        memory = cfg.memory_mb << 20 if self._cgroup_parent is None else None
        rlimits = limits.run_rlimits(
            limit, cfg.max_file_bytes, memory_bytes=memory, nproc=cfg.pids, nofile=_NOFILE
        )
        source = code.encode()
        spec = isolated_request(language, bwrap.program_path()) if isolated else None
        # Only an isolated run may start from a prelude: the server ran it in the state isolation gives.
        prelude = trusted_prelude(source) if isolated and language == "python" else None
        for _ in range(2):  # a server found dead took nothing: start a fresh one and send the run there
            server = self._server
            if server is None or not server.alive:
                try:
                    server = await asyncio.to_thread(self._ensure_server)
                except ServerUnsupported:
                    return None
                except ServerStartError as exc:
                    return RunResult("sandbox_error", stderr=f"the sandbox failed to start: {exc}")
                except SandboxError as exc:  # closed meanwhile
                    return RunResult("sandbox_error", stderr=str(exc))
            try:
                return await server.run(
                    language,
                    source,
                    data,
                    limit,
                    rlimits,
                    cfg.max_output_bytes,
                    isolated=spec,
                    prelude=prelude,
                )
            except ServerGone:
                continue
        return RunResult("sandbox_error", stderr="the sandbox server stopped before the run could start")

    def _ensure_server(self) -> ForkServer:
        """The running fork server, started (or restarted after it died) if need be; blocks while it starts."""
        global _fork_server_unsupported
        with self._server_lock:
            self._check_open()
            if self._server is not None and self._server.alive:
                return self._server
            if self._server is not None:
                self._server.close()
                self._server = None
            cfg, cgroup = self.config, None
            if self._cgroup_parent is not None:
                # The whole sandbox (server and concurrent runs); each run also has its own rlimits.
                cgroup = limits.new_cgroup(
                    self._cgroup_parent,
                    memory_bytes=(cfg.memory_mb + 64) << 20,
                    pids=cfg.pids + 8,
                    cpus=cfg.cpus,
                )
            script = os.path.join(self._code_dir, "forkserver.py")
            if not os.path.exists(script):
                shutil.copyfile(SERVER_SCRIPT, script)
                os.chmod(script, 0o644)  # readable by the sandbox user whatever the install's umask was
            # Nothing here refers back to the sandbox: its reader thread keeps the server alive, and an
            # unclosed sandbox must still be garbage-collected (and so closed) like any other object.
            argv_for = functools.partial(
                _server_argv,
                bwrap_mode=self.mode,
                userns_fd=self._userns_fd,
                workdir=self.workdir,
                script=script,
                network=cfg.network,
                env=bwrap.program_env(bwrap.SANDBOX_DIR, cfg.env),
                tmp_bytes=server_tmp_bytes(cfg.memory_mb),
                extra_ro_paths=tuple(cfg.extra_ro_paths),
                cgroup=cgroup,
            )
            server = ForkServer(
                argv_for,
                env=bwrap.HOST_ENV,
                pass_fds=[fd for fd in (self._userns_fd,) if fd is not None],
                log_path=os.path.join(self._root or "/", "server.log"),
                cgroup=cgroup,
            )
            try:
                server.start(_SERVER_START_TIMEOUT_S)
            except ServerUnsupported as exc:
                server.close()
                _fork_server_unsupported = str(exc)
                self.fork_server = False
                self.limits_enforced = self._describe_limits()
                warnings.warn(
                    f"aligngym local sandbox: the fork server does not work here ({exc}); every run starts "
                    "a fresh bwrap instead (slower, same isolation)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                raise
            except BaseException:
                server.close()
                raise
            self._server = server
            self.server_starts += 1
            return server

    async def _run_oneshot(
        self, language: str, code: str, data: bytes | None, limit: float, isolated: bool = False
    ) -> RunResult:
        """Run in a fresh bwrap (or, unisolated, a plain subprocess)."""
        code_file = os.path.join(self._code_dir, uuid.uuid4().hex + _SUFFIX[language])
        with open(code_file, "w", encoding="utf-8") as f:
            f.write(code)
        os.chmod(code_file, 0o644)
        status_r = status_w = seccomp_fd = None
        cgroup: limits.Cgroup | None = None
        try:
            try:
                if self.isolated:
                    status_r, status_w = os.pipe()
                    seccomp_fd = bwrap.seccomp_filter_fd()  # as fork-server runs: no new user namespaces
                if self._cgroup_parent is not None:
                    cfg = self.config
                    cgroup = limits.new_cgroup(
                        self._cgroup_parent, memory_bytes=cfg.memory_mb << 20, pids=cfg.pids, cpus=cfg.cpus
                    )
                argv, env = self._command(language, code_file, limit, status_w, cgroup, seccomp_fd, isolated)
                started = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd="/" if self.isolated else self.workdir,
                    env=env,
                    pass_fds=[fd for fd in (status_w, self._userns_fd, seccomp_fd) if fd is not None],
                    # Its own process group, so a kill reaches every process it starts (bwrap's pid namespace
                    # then takes down anything that called setsid).
                    start_new_session=True,
                )
            except OSError as exc:
                return RunResult("sandbox_error", stderr=f"the sandbox could not start: {exc}")
            finally:
                if status_w is not None:
                    os.close(status_w)  # the child holds its own copy; EOF must come when bwrap exits
                if seccomp_fd is not None:
                    os.close(seccomp_fd)
            self._pgids.add(proc.pid)  # so close() can kill runs still in flight
            try:
                cap = self.config.max_output_bytes
                result = await supervise(
                    proc, started=started, stdin=data, limit=limit, cap=cap, status_fd=status_r, cgroup=cgroup
                )
            finally:
                self._pgids.discard(proc.pid)
            return self._unless_closed(result)
        finally:
            if status_r is not None:
                os.close(status_r)
            if cgroup is not None:
                cgroup.remove()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(code_file)

    def _command(
        self,
        language: str,
        code_file: str,
        limit: float,
        status_w: int | None,
        cgroup: limits.Cgroup | None,
        seccomp_fd: int | None = None,
        isolated: bool = False,
    ) -> tuple[list[str], dict[str, str]]:
        """The full argv and the environment of the process to start (``isolated``: see ``Sandbox``)."""
        cfg, python = self.config, bwrap.python_executable()
        inner_dir = bwrap.SANDBOX_DIR if self.isolated else self.workdir
        program = f"{bwrap.CODE_DIR}/main{_SUFFIX[language]}" if self.isolated else code_file
        rlimits = limits.run_rlimits(
            limit,
            cfg.max_file_bytes,
            memory_bytes=cfg.memory_mb << 20 if cgroup is None else None,
            nproc=cfg.pids if cgroup is None and self.isolated else None,
        )
        argv = [*limits.rlimit_prefix(rlimits, python), *bwrap.runner_argv(language, program, isolated)]
        env = bwrap.program_isolated_env() if isolated else bwrap.program_env(inner_dir, cfg.env)
        if self.isolated:
            assert status_w is not None
            argv = (
                bwrap.bwrap_argv(
                    bwrap_mode=self.mode,
                    userns_fd=self._userns_fd,
                    workdir=self.workdir,
                    code_file=code_file,
                    code_inner=program,
                    network=cfg.network,
                    env=env,
                    status_fd=status_w,
                    tmp_bytes=cfg.memory_mb << 20,
                    seccomp_fd=seccomp_fd,
                    extra_ro_paths=tuple(cfg.extra_ro_paths),
                )
                + argv
            )
            env = dict(bwrap.HOST_ENV)
        if cgroup is not None:
            argv = cgroup.wrap(argv)
        return argv, env

    # -- files ---------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files (paths relative to the working directory) for later runs to read."""
        self._check_open()
        self._files.write(files)

    def read_bytes(self, path: str) -> bytes:
        """Return the bytes of a file in the working directory (at most ``max_file_mb``)."""
        self._check_open()
        return self._files.read(path)

    # -- lifecycle -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Make the sandbox as good as new for its next user: kill every run, empty the working directory."""
        # A warm fork server stays (it never runs user code itself); a dead one is replaced on the next run.
        self._check_open()
        for pgid in list(self._pgids):
            kill_tree(pgid)
        deadline = time.monotonic() + 2.0
        while self._pgids and time.monotonic() < deadline:
            time.sleep(0.005)  # their supervisors reap them and forget their groups
        server = self._server
        if server is not None and server.alive:
            server.kill_runs()
        empty_dir(self.workdir)
        os.chmod(self.workdir, 0o700)
        if self._owner:
            os.chown(self.workdir, *self._owner)

    def close(self) -> None:
        """Kill running programs and delete the working directory; calling it again does nothing."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            for pgid in list(self._pgids):
                kill_tree(pgid)
            with self._server_lock:
                server, self._server = self._server, None
            if server is not None:
                server.close()
            if self._userns_fd is not None:
                os.close(self._userns_fd)
                self._userns_fd = None
            if self._root is not None:
                remove_tree(self._root)
        finally:
            self._give_back_slot()

    def __repr__(self) -> str:
        return (
            f"LocalSandbox(mode={self.mode!r}, fork_server={self.fork_server}, "
            f"workdir={getattr(self, 'workdir', None)!r}, closed={self._closed})"
        )
