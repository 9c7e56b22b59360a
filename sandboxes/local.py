"""The local sandbox backend: bubblewrap on this machine, or (unisolated, with a warning) a plain subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping

from . import bwrap, limits
from .base import LANGUAGES, Language, RunResult, Sandbox, SandboxConfig, SandboxError
from .supervise import kill_tree, supervise
from .workdir import WorkDir

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SUFFIX = {"python": ".py", "bash": ".sh"}
_warned_unisolated = False


@functools.lru_cache(maxsize=1)
def bwrap_available() -> bool:
    """Whether bubblewrap is installed and a probe program runs in it (checked once per process)."""
    if bwrap.tools_missing(bwrap.mode()):
        return False
    try:
        with LocalSandbox(SandboxConfig(use_bwrap=True, timeout=30)) as sandbox:
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


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        # Sandboxed code may leave directories without write or search permission for their owner.
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


class LocalSandbox(Sandbox):
    """Runs programs on this machine: in bubblewrap when it works, else unisolated with one warning."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._closed = False
        self._root: str | None = None
        self._userns_fd: int | None = None
        self._pgids: set[int] = set()
        use_bwrap = bwrap_available() if self.config.use_bwrap is None else self.config.use_bwrap
        #: "userns" or "classic" (bubblewrap, see ``aligngym.sandboxes.bwrap``) or "none" (unisolated).
        self.mode = bwrap.mode() if use_bwrap else "none"
        self.isolated = self.mode != "none"
        if self.isolated and (missing := bwrap.tools_missing(self.mode)):
            raise SandboxError(f"use_bwrap=True but {', '.join(missing)} is not on PATH")
        if self.mode == "userns":
            try:
                self._userns_fd = bwrap.make_userns()
            except OSError as exc:
                raise SandboxError(f"could not create the sandbox's user namespace: {exc}") from exc
        self._root = tempfile.mkdtemp(prefix="aligngym-sandbox-")
        #: Host path of the working directory (``/sandbox`` inside bubblewrap).
        self.workdir = os.path.join(self._root, "work")
        self._code_dir = os.path.join(self._root, "code")
        os.mkdir(self.workdir, 0o700)
        os.mkdir(self._code_dir, 0o700)
        # In userns mode programs run as host uid 65534, which must own its working directory and our files.
        self._owner = (bwrap.SANDBOX_UID, bwrap.SANDBOX_UID) if self.mode == "userns" else None
        if self._owner:
            os.chown(self.workdir, *self._owner)
        self._files = WorkDir(self.workdir, self.config.max_file_bytes, self._owner)
        self._cgroup_parent = limits.cgroup_parent()
        #: Which mechanism enforces each limit here ("none" where nothing does).
        self.limits_enforced = self._describe_limits()
        if not self.isolated:
            _warn_unisolated()

    def _describe_limits(self) -> dict[str, str]:
        cgroup = self._cgroup_parent is not None
        # The kernel exempts host uid 0 from RLIMIT_NPROC, and outside a user namespace it counts every
        # process of the host user, so it only means "this run's processes" in these two cases.
        nproc = self.mode == "userns" or (self.mode == "classic" and os.geteuid() != 0)
        return {
            "filesystem": "bwrap" if self.isolated else "none",
            "network": "netns" if self.isolated and not self.config.network else "none",
            "user": f"uid {bwrap.SANDBOX_UID}" if self.isolated else "none",
            "memory": "cgroup" if cgroup else "rlimit_as",
            "pids": "cgroup" if cgroup else ("rlimit_nproc" if nproc else "none"),
            "cpus": "cgroup" if cgroup else "none",
            "cpu_time": "rlimit_cpu",
            "file_size": "rlimit_fsize",
            "wall_time": "kill",
        }

    # -- running -------------------------------------------------------------------------------------
    async def arun(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``code`` as a ``language`` program in the working directory and report how it ended."""
        self._check_open()
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        limit = self.config.timeout if timeout is None else float(timeout)
        if limit <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        code_file = os.path.join(self._code_dir, uuid.uuid4().hex + _SUFFIX[language])
        with open(code_file, "w", encoding="utf-8") as f:
            f.write(code)
        os.chmod(code_file, 0o644)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        status_r = status_w = None
        cgroup: limits.Cgroup | None = None
        try:
            try:
                if self.isolated:
                    status_r, status_w = os.pipe()
                if self._cgroup_parent is not None:
                    cfg = self.config
                    cgroup = limits.Cgroup(
                        self._cgroup_parent, memory_bytes=cfg.memory_mb << 20, pids=cfg.pids, cpus=cfg.cpus
                    )
                argv, env = self._command(language, code_file, limit, status_w, cgroup)
                started = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd="/" if self.isolated else self.workdir,
                    env=env,
                    pass_fds=[fd for fd in (status_w, self._userns_fd) if fd is not None],
                    # Its own process group, so a kill reaches every process it starts (bwrap's pid namespace
                    # then takes down anything that called setsid).
                    start_new_session=True,
                )
            except OSError as exc:
                return RunResult("sandbox_error", stderr=f"the sandbox could not start: {exc}")
            finally:
                if status_w is not None:
                    os.close(status_w)  # the child holds its own copy; EOF must come when bwrap exits
            return await self._supervise(proc, started, data, limit, status_r, cgroup)
        finally:
            if status_r is not None:
                os.close(status_r)
            if cgroup is not None:
                cgroup.remove()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(code_file)

    def _command(
        self, language: str, code_file: str, limit: float, status_w: int | None, cgroup: limits.Cgroup | None
    ) -> tuple[list[str], dict[str, str]]:
        """The full argv and the environment of the process to start."""
        cfg, python = self.config, bwrap.python_executable()
        inner_dir = bwrap.SANDBOX_DIR if self.isolated else self.workdir
        program = f"{bwrap.CODE_DIR}/main{_SUFFIX[language]}" if self.isolated else code_file
        runner = python if language == "python" else shutil.which("bash") or "/bin/bash"
        rlimits = {"cpu": math.ceil(limit) + 1, "fsize": cfg.max_file_bytes, "core": 0}
        if cgroup is None:
            rlimits["as"] = cfg.memory_mb << 20
            if self.isolated:
                rlimits["nproc"] = cfg.pids
        argv = [*limits.rlimit_prefix(rlimits, python), runner, program]
        env = {
            "PATH": f"{os.path.dirname(python)}:{_SYSTEM_PATH}",
            "HOME": inner_dir,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # The program file lives outside the working directory; this keeps the modules written there importable.
            "PYTHONPATH": inner_dir,
            **cfg.env,
        }
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
                )
                + argv
            )
            env = {"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8"}
        if cgroup is not None:
            argv = cgroup.wrap(argv)
        return argv, env

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        started: float,
        stdin: bytes | None,
        limit: float,
        status_r: int | None,
        cgroup: limits.Cgroup | None,
    ) -> RunResult:
        self._pgids.add(proc.pid)  # so close() can kill runs still in flight
        try:
            cap = self.config.max_output_bytes
            result = await supervise(
                proc, started=started, stdin=stdin, limit=limit, cap=cap, status_fd=status_r, cgroup=cgroup
            )
        finally:
            self._pgids.discard(proc.pid)
        if self._closed:
            return RunResult(
                "sandbox_error", stderr="the sandbox was closed during the run", duration_s=result.duration_s
            )
        return result

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
    def close(self) -> None:
        """Kill running programs and delete the working directory; calling it again does nothing."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for pgid in list(self._pgids):
            kill_tree(pgid)
        if self._userns_fd is not None:
            os.close(self._userns_fd)
            self._userns_fd = None
        if self._root is not None:
            _remove_tree(self._root)

    def __repr__(self) -> str:
        return f"LocalSandbox(mode={self.mode!r}, workdir={getattr(self, 'workdir', None)!r}, closed={self._closed})"
