"""The host side of a sandbox's working directory: file transfer with every path checked against escapes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import PurePosixPath

from .base import SandboxError


class WorkDir:
    """A host directory shared with sandboxed programs; paths are relative to it and may never leave it."""

    def __init__(self, path: str, max_bytes: int, owner: tuple[int, int] | None = None):
        self.path = os.path.realpath(path)
        self.max_bytes = max_bytes
        #: uid/gid given to what we write, so a sandbox running as another user can change it.
        self.owner = owner

    def parts(self, path: str) -> list[str]:
        """The components of ``path`` after refusing absolute paths, ``..`` and other malformed names."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise SandboxError(f"invalid sandbox path {path!r}")
        parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
        if os.path.isabs(path) or ".." in parts or not parts:
            raise SandboxError(
                f"{path!r} escapes the sandbox: paths are relative to the working directory, no '..'"
            )
        return parts

    def resolve(self, path: str) -> str:
        """The host path of ``path``, refusing escapes (also through symlinks planted by sandboxed code)."""
        full = os.path.realpath(os.path.join(self.path, *self.parts(path)))
        if not full.startswith(self.path + os.sep):
            raise SandboxError(f"{path!r} resolves outside the sandbox working directory (a symlink?)")
        return full

    @contextlib.contextmanager
    def _parent_fd(self, path: str, create: bool):
        """A directory fd for ``path``'s parent, reached one component at a time without following links.

        Sandboxed code runs while we transfer files and can swap any directory for a symlink between a check
        and a use; opening each component relative to the previous one with O_NOFOLLOW leaves no such window.
        """
        # Links inside the sandbox that stay inside are followed once here (realpath), then the resolved,
        # link-free path is walked; a link swapped in afterwards makes the walk fail instead of escaping.
        *dirs, name = os.path.relpath(self.resolve(path), self.path).split(os.sep)
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            for part in dirs:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    if self.owner:
                        os.fchown(next_fd, *self.owner)
                except OSError:  # ELOOP (a symlink) or ENOTDIR: nothing we may walk through
                    raise SandboxError(f"{path!r}: {part!r} is not a directory inside the sandbox") from None
                os.close(fd)
                fd = next_fd
            yield fd, name
        finally:
            os.close(fd)

    def write(self, files: Mapping[str, str | bytes]) -> None:
        """Write each file (str as UTF-8), creating parent directories."""
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else bytes(content)
            if len(data) > self.max_bytes:
                raise SandboxError(
                    f"{path!r} is {len(data)} bytes, over the {self.max_bytes}-byte file limit"
                )
            with self._parent_fd(path, create=True) as (dir_fd, name):
                # O_NOFOLLOW: a symlink as the last component is refused; O_NONBLOCK: a FIFO cannot hang us.
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                try:
                    fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
                except OSError as exc:
                    raise SandboxError(f"cannot write {path!r} in the sandbox: {exc.strerror}") from None
                try:
                    with os.fdopen(fd, "wb") as f:
                        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                            raise SandboxError(f"{path!r} is not a regular file")
                        f.write(data)
                        if self.owner:
                            os.fchown(f.fileno(), *self.owner)
                except OSError as exc:  # ENOSPC: the working directory's size bound (memory_mb) is reached
                    raise SandboxError(
                        f"cannot write {path!r} in the sandbox: {exc.strerror}; reset() empties the working "
                        "directory, and SandboxConfig.memory_mb bounds its size"
                    ) from None

    def read(self, path: str) -> bytes:
        """The bytes of a regular file, refusing files over the size limit."""
        try:
            with self._parent_fd(path, create=False) as (dir_fd, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise SandboxError(f"cannot read {path!r} in the sandbox: {exc.strerror} (a symlink?)") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SandboxError(f"{path!r} is not a regular file")
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise SandboxError(f"{path!r} is over the {self.max_bytes}-byte file limit")
        return data


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def empty_dir(path: str) -> None:
    """Delete everything inside ``path`` (never following links) but keep the directory itself."""
    with os.scandir(path) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            remove_tree(full)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)


_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 0x2, 0x4, 0x2


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount_tmpfs(path: str, size_bytes: int, owner: tuple[int, int] | None) -> bool:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (a size bound for everything written there together).

    Needs CAP_SYS_ADMIN in this mount namespace (e.g. root); returns False where it may not mount.
    """
    uid, gid = owner or (os.getuid(), os.getgid())
    options = f"size={max(size_bytes, 1 << 20)},mode=0700,uid={uid},gid={gid}".encode()
    done = _libc().mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options)
    return done == 0


def unmount_under(root: str) -> None:
    """Detach every mount at or below ``root`` (tmpfs working directories of sandboxes)."""
    root = os.path.realpath(root)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    decoded = (p.encode().decode("unicode_escape") for p in points)  # mountinfo escapes spaces as \040
    for point in sorted({p for p in decoded if p == root or p.startswith(root + "/")}, reverse=True):
        _libc().umount2(point.encode(), _MNT_DETACH)


def remove_tree(path: str) -> None:
    """Delete a directory tree, even one whose directories sandboxed code made unreadable."""
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        # Sandboxed code may leave directories without write or search permission for their owner.
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)
