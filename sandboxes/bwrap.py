"""Bubblewrap command lines for the local sandbox: namespaces, a read-only host view and an unprivileged user.

Two modes, picked by who runs the host process:

* ``userns`` (host root): bwrap started by root would map the sandbox uid to host uid 0, which can then read
  every root-owned file by owner permission (``/etc/shadow``, ``/root``) and is exempt from RLIMIT_NPROC. So
  root builds a user namespace mapping only 0->0 and 65534->65534, bwrap sets up the mounts inside it, and
  ``setpriv`` drops the program to host uid 65534 with no capabilities before anything untrusted runs.
* ``classic`` (any other user): plain ``bwrap --unshare-all --uid 65534``; the sandbox is the host user.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys

SANDBOX_UID = 65534
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The environment bwrap itself runs with; the program's is set inside (``--clearenv``, ``--setenv``).
HOST_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
#: Where the working directory appears inside the sandbox.
SANDBOX_DIR = "/sandbox"
#: Read-only directory inside the sandbox holding the program file of the current run.
CODE_DIR = "/.aligngym"
# Replaced by fresh mounts; /run also holds host sockets (docker.sock, D-Bus) that a read-only bind leaves usable.
_SKIP_TOP_LEVEL = {"proc", "dev", "tmp", "run", SANDBOX_DIR.strip("/"), CODE_DIR.strip("/")}
_RESOLVER_DIR = "/run/systemd/resolve"  # where /etc/resolv.conf points on systemd-resolved hosts


def python_executable() -> str:
    """The interpreter sandboxed Python runs with: this one, by absolute path (a venv keeps its packages)."""
    return os.path.abspath(sys.executable)


def program_env(inner_dir: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment a sandboxed program sees (never the host's); ``inner_dir`` is its working directory."""
    python = python_executable()
    return {
        "PATH": f"{os.path.dirname(python)}:{SYSTEM_PATH}",
        "HOME": inner_dir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # The program file lives outside the working directory; this keeps the modules written there importable.
        "PYTHONPATH": inner_dir,
        **extra,
    }


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


def _needed_paths() -> list[str]:
    """Directories the interpreter needs, outermost only."""
    return _outermost(
        {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(python_executable()))}
    )


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


# Container runtimes' data: left out of the view. Their overlay mounts come and go while containers start and
# stop, and a recursive bind racing one fails ("Can't bind mount ... Invalid argument"); nor should a sandbox
# see other containers' files.
_LEFT_OUT = ("/var/lib/docker", "/var/lib/containerd", "/var/lib/containers")


def _ro_view(path: str) -> list[str]:
    """bwrap options showing ``path`` read-only, entry by entry along the way to anything ``_LEFT_OUT``."""
    if path in _LEFT_OUT:
        return []
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if not any(out.startswith(path + os.sep) for out in _LEFT_OUT) or not os.path.isdir(path):
        return ["--ro-bind", path, path]
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return ["--ro-bind", path, path]
    options = ["--perms", "0755", "--dir", path]
    for name in names:
        options += _ro_view(os.path.join(path, name))
    return options


@functools.lru_cache(maxsize=2)
def host_view(hide_unsearchable: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """bwrap options for a read-only view of the host: (top-level binds, hiding and re-binding after /tmp).

    Top-level entries are bound one by one (not ``--ro-bind / /``) so the root stays bwrap's own tmpfs and
    ``/sandbox`` can be created on it. The user's home is replaced by an empty tmpfs. With
    ``hide_unsearchable`` (userns mode, where the program runs as uid 65534) so is a directory others cannot
    enter that holds the interpreter (``/root`` for pyenv). The interpreter is then bound back, as it is when
    it lives under ``/tmp`` (which the sandbox gets fresh), so the program can start Python and see no more.
    """
    top: list[str] = []
    for name in sorted(os.listdir("/")):
        if name not in _SKIP_TOP_LEVEL:
            top += _ro_view("/" + name)
    home = os.path.realpath(os.path.expanduser("~"))
    hidden = {home} if home != "/" and os.path.isdir(home) else set()
    needed = _needed_paths()
    if hide_unsearchable:
        for path in needed:
            blocked = [a for a in _ancestors(path) if not os.stat(a).st_mode & stat.S_IXOTH]
            hidden.update(blocked[:1])
    hidden_roots = _outermost(hidden)
    rest = [x for h in hidden_roots for x in ("--tmpfs", h)]
    for path in needed:
        under = [h for h in [*hidden_roots, "/tmp"] if path.startswith(h + os.sep)]
        if under:
            # bwrap would create the missing parents 0700, which uid 65534 could not walk through.
            parents = [a for a in _ancestors(path) if a.startswith(under[0] + os.sep)]
            rest += [x for a in parents for x in ("--perms", "0755", "--dir", a)]
            rest += ["--ro-bind", path, path]
    return tuple(top), tuple(rest)


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
) -> list[str]:
    """The bwrap command (up to ``--`` and the uid drop) running ``code_file``, bound read-only at ``code_inner``.

    ``seccomp_fd``: a compiled seccomp program (``seccomp_filter_fd``) bwrap installs before it execs the run.
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
    top, rest = host_view(bwrap_mode == "userns")
    argv += top
    argv += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    argv += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp", "--tmpfs", "/run", *rest]
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
) -> list[str]:
    """bwrap running the fork server ``script`` on ``ctl_fd``, for programs with ``env`` and ``tmp_bytes`` of /tmp."""
    startup = {key: value for key, value in env.items() if key not in _STARTUP_UNSAFE}
    startup["HOME"] = "/"
    settings = {"env": env, "bash": shutil.which("bash") or "/bin/bash", "tmp_bytes": tmp_bytes}
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
