"""The sandbox interface: where untrusted (model-written) code runs, and what a run reports back."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

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
#: Runner options of an isolated run, per language. Python: ``-I`` (no PYTHON* variables, no user site,
#: neither the script's nor the working directory on sys.path), no bytecode files, unbuffered output as in
#: other runs. Bash: no start-up files (a script reads none anyway; BASH_ENV and ENV are unset).
ISOLATED_FLAGS: Mapping[str, tuple[str, ...]] = {
    "python": ("-I", "-B", "-u"),
    "bash": ("--noprofile", "--norc"),
}


def isolated_env(path: str | None) -> dict[str, str]:
    """The whole environment of an isolated run, with ``path`` as PATH (never the config's ``env``).

    ``path`` None leaves PATH out, for a runner that knows its own (the docker executor: the image's PATH).
    """
    env = {
        "LANG": "C.UTF-8",
        "HOME": ISOLATED_HOME,
        "PYTHONDONTWRITEBYTECODE": "1",
        # For a python3 that an isolated bash program starts without -I: no user site, no '' on sys.path.
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
    }
    return env if path is None else {"PATH": path, **env}


def isolated_request(language: str, path: str | None) -> dict[str, Any]:
    """An isolated run as the stdlib-only runners take it (fork server, docker executor): flags and env.

    They import nothing of ours, so each isolated run request carries this, and this module stays the one
    place that says what an isolated run is.
    """
    return {"flags": list(ISOLATED_FLAGS[language]), "env": isolated_env(path)}


class Slot(abc.ABC):
    """A live sandbox's place under the process-wide cap (``sandboxes.cap`` hands them out)."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def held(self) -> bool:
        """Whether the place is still taken."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the place back; only the first call counts, so every holder may call it on its way out."""


class Sandbox(abc.ABC):
    """A private working directory plus a way to run programs in it under limits.

    The whole contract of a backend:

    * creation: ``Backend(config, *, slot=None)`` blocks until the sandbox is ready; ``await
      Backend.acreate(config)`` does the same without blocking the event loop.
    * the cap: a live sandbox holds one ``Slot`` under the process-wide cap (``sandboxes.cap``). It is given
      ``slot`` when a pool already took one for it, else takes its own (``cap.acquire_slot``, waiting up to
      ``SandboxConfig.slot_timeout``), and ``close`` gives it back. A backend whose resources another pool
      owns hands the slot to that pool instead (docker: the container holds it).
    * runs: ``arun`` (abstract) and its blocking twin ``run``; files: ``write_files``, ``read_bytes``
      (abstract) and ``read_file``.
    * reuse: ``reset`` makes it as good as new for another user; a backend that cannot raises, and a pool
      closes the sandbox instead (local and docker both reset; docker replaces a container it cannot prove clean).
    * ``close``: stop everything, free everything, give the slot back; idempotent; also on garbage collection.

    ``run(..., isolated=True)`` starts a program that nothing earlier runs wrote can influence: Python as
    ``python -I`` (no PYTHONPATH, no user site or ``.pth`` files from HOME, neither the program's nor the
    working directory on ``sys.path``, so no ``sitecustomize``/``usercustomize`` or module shadowing from the
    working directory or /tmp), bash as ``bash --noprofile --norc`` (``ISOLATED_FLAGS``), both with the
    environment cleared to ``isolated_env`` (HOME ``/nonexistent``, none of ``SandboxConfig.env``). The
    working directory is still the current directory. It protects against what finished runs left, not
    against runs in flight.
    """

    config: SandboxConfig
    #: This sandbox's place under the cap while it lives (None: not counted, or given back).
    _slot: Slot | None = None

    # -- creation -------------------------------------------------------------------------------------
    @classmethod
    async def acreate(cls, config: SandboxConfig | None = None, **kwargs: Any) -> Self:
        """Create a sandbox without blocking the event loop (waiting for a slot under the cap included).

        ``kwargs`` go to the constructor. Cancelled, the creation still finishes and the sandbox is closed.
        """
        done: concurrent.futures.Future[Self] = concurrent.futures.Future()

        def create() -> None:
            try:
                sandbox = cls(config, **kwargs)
            except BaseException as exc:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    done.set_exception(exc)
                return
            try:
                done.set_result(sandbox)
            except concurrent.futures.InvalidStateError:
                sandbox.close()  # the caller gave up waiting

        # A thread of its own, not the loop's executor: asyncio.run would wait for it at exit, even cancelled.
        threading.Thread(target=create, name="aligngym-sandbox-create", daemon=True).start()
        return await asyncio.wrap_future(done)

    def _give_back_slot(self) -> None:
        """Give the slot back (``close`` calls it last); later calls do nothing."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    # -- runs -----------------------------------------------------------------------------------------
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

    def _run_limit(self, language: str, timeout: float | None) -> float:
        """Validate a run's language and timeout; the wall limit in seconds (the config's by default)."""
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        limit = self.config.timeout if timeout is None else float(timeout)
        if limit <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        return limit

    # -- files ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files (paths relative to the working directory) for later runs to read."""

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the bytes of a file in the working directory."""

    def read_file(self, path: str) -> str:
        """Return a file in the working directory as text (UTF-8, undecodable bytes replaced)."""
        return self.read_bytes(path).decode("utf-8", errors="replace")

    # -- reuse and closing ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Make the sandbox as good as new for its next user (kill every run, empty the working directory).

        This backend cannot: ``SandboxError`` (close the sandbox and make a new one).
        """
        raise SandboxError(f"{type(self).__name__} cannot be reset; close it and make a new one")

    @abc.abstractmethod
    def close(self) -> None:
        """Stop running programs, delete the working directory, give the slot back; again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
