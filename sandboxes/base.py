"""The sandbox interface: where untrusted (model-written) code runs, and what a run reports back."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "sandbox_error"]
Language = Literal["python", "bash"]
LANGUAGES: tuple[str, ...] = ("python", "bash")


class SandboxError(RuntimeError):
    """The sandbox refused an operation (a path escaping the working directory, a closed sandbox, ...)."""


@dataclass
class RunResult:
    """What one program run produced; ``status`` says how it ended."""

    status: Status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    duration_s: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 inside every limit."""
        return self.status == "ok"


@dataclass
class SandboxConfig:
    """Limits and isolation settings shared by every sandbox backend."""

    timeout: float = field(
        default=10.0, metadata={"help": "Wall-clock seconds a run may take before it is killed."}
    )
    memory_mb: int = field(
        default=512, metadata={"help": "Memory limit in MiB (cgroup memory.max or RLIMIT_AS)."}
    )
    cpus: float = field(
        default=1.0, metadata={"help": "CPU cores a run may use (enforced only with a cgroup)."}
    )
    pids: int = field(default=64, metadata={"help": "Most processes/threads a run may have at once."})
    network: bool = field(
        default=False, metadata={"help": "Give the sandbox the host network (off: no network)."}
    )
    max_output_bytes: int = field(
        default=1 << 20,
        metadata={
            "help": "Bytes kept per output stream; past it the run is killed with status output_limit."
        },
    )
    max_file_mb: int = field(
        default=64,
        metadata={"help": "Largest file a run may write, and write_files/read_file may move, in MiB."},
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Extra environment variables for the program (the host environment is never passed)."
        },
    )
    use_bwrap: bool | None = field(
        default=None,
        metadata={
            "help": "local backend: True requires bubblewrap, False runs unisolated, None picks bwrap if it works."
        },
    )
    fork_server: bool = field(
        default=True,
        metadata={
            "help": "local backend with bwrap: keep a warm interpreter in the sandbox that forks per run (fast); "
            "False starts a fresh bwrap and interpreter for every run."
        },
    )
    slot_timeout: float = field(
        default=300.0,
        metadata={
            "help": "Seconds creating a sandbox may wait for a free slot under the process-wide cap "
            "(ALIGNGYM_MAX_SANDBOXES) before it raises SandboxError."
        },
    )
    extra_ro_paths: list[str] = field(
        default_factory=list,
        metadata={
            "help": "local backend with bwrap: extra host paths (absolute; files or directories) shown "
            "read-only at the same path. The default view holds only the system directories (/usr, /bin, "
            "/lib*, /etc) and the interpreter with its site-packages."
        },
    )
    image: str = field(
        default="aligngym-sandbox:latest",
        metadata={
            "help": "docker backend: the image to run (`aligngym sandbox build` makes the default; any local image with python3)."
        },
    )

    def __post_init__(self) -> None:
        for name in (
            "timeout",
            "memory_mb",
            "cpus",
            "pids",
            "max_output_bytes",
            "max_file_mb",
            "slot_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise TypeError("SandboxConfig.env must map str to str")
        self.extra_ro_paths = list(self.extra_ro_paths)
        for path in self.extra_ro_paths:
            if not (isinstance(path, str) and path.startswith("/") and "\x00" not in path):
                raise ValueError(f"SandboxConfig.extra_ro_paths holds absolute paths, got {path!r}")

    @property
    def max_file_bytes(self) -> int:
        """``max_file_mb`` in bytes."""
        return self.max_file_mb << 20


#: HOME of isolated runs: a directory that does not exist and cannot be made (the root is read-only).
ISOLATED_HOME = "/nonexistent"
#: Interpreter options of an isolated Python run: ``-I`` (no PYTHON* variables, no user site, neither the
#: script's nor the working directory on sys.path), no bytecode files, unbuffered output as in other runs.
ISOLATED_PYTHON_FLAGS = ("-I", "-B", "-u")
#: Options of an isolated bash run (a script reads no start-up files anyway; BASH_ENV and ENV are unset).
ISOLATED_BASH_FLAGS = ("--noprofile", "--norc")


def isolated_env(path: str) -> dict[str, str]:
    """The whole environment of an isolated run, with ``path`` as PATH (never the config's ``env``)."""
    return {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": ISOLATED_HOME,
        "PYTHONDONTWRITEBYTECODE": "1",
        # For a python3 that an isolated bash program starts without -I: no user site, no '' on sys.path.
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
    }


class Sandbox(abc.ABC):
    """A private working directory plus a way to run programs in it under limits.

    ``run(..., isolated=True)`` starts a program that nothing earlier runs wrote can influence: Python as
    ``python -I`` (no PYTHONPATH, no user site or ``.pth`` files from HOME, neither the program's nor the
    working directory on ``sys.path``, so no ``sitecustomize``/``usercustomize`` or module shadowing from the
    working directory or /tmp), bash as ``bash --noprofile --norc``, both with the environment cleared to
    ``isolated_env`` (HOME ``/nonexistent``, none of ``SandboxConfig.env``). The working directory is still
    the current directory. It protects against what finished runs left, not against runs in flight.
    """

    config: SandboxConfig

    @abc.abstractmethod
    async def arun(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        isolated: bool = False,
    ) -> RunResult:
        """Run ``code`` as a ``language`` program in the working directory and report how it ended."""

    def _run_limit(self, language: str, timeout: float | None) -> float:
        """Validate a run's language and timeout; the wall limit in seconds (the config's by default)."""
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        limit = self.config.timeout if timeout is None else float(timeout)
        if limit <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        return limit

    @abc.abstractmethod
    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files (paths relative to the working directory) for later runs to read."""

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the bytes of a file in the working directory."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop running programs and delete the working directory; calling it again does nothing."""

    def run(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        isolated: bool = False,
    ) -> RunResult:
        """Blocking twin of ``arun``."""
        coro = self.arun(code, language=language, stdin=stdin, timeout=timeout, isolated=isolated)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # asyncio.run refuses to nest inside a running loop, so the run gets a loop of its own in a helper thread.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox-run") as pool:
            return pool.submit(asyncio.run, coro).result()

    def read_file(self, path: str) -> str:
        """Return a file in the working directory as text (UTF-8, undecodable bytes replaced)."""
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
