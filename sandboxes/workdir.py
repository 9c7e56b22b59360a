"""The host side of a sandbox's working directory: file transfer with every path checked against escapes."""

from __future__ import annotations

import contextlib
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

    def resolve(self, path: str) -> str:
        """The host path of ``path`` after refusing absolute paths, ``..`` and symlinks leading outside."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise SandboxError(f"invalid sandbox path {path!r}")
        if os.path.isabs(path) or ".." in PurePosixPath(path).parts:
            raise SandboxError(
                f"{path!r} escapes the sandbox: paths are relative to the working directory, no '..'"
            )
        # realpath follows symlinks that sandboxed code may have planted, so the prefix check sees their target.
        full = os.path.realpath(os.path.join(self.path, path))
        if not full.startswith(self.path + os.sep):
            raise SandboxError(f"{path!r} resolves outside the sandbox working directory (a symlink?)")
        return full

    def write(self, files: Mapping[str, str | bytes]) -> None:
        """Write each file (str as UTF-8), creating parent directories."""
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else bytes(content)
            if len(data) > self.max_bytes:
                raise SandboxError(
                    f"{path!r} is {len(data)} bytes, over the {self.max_bytes}-byte file limit"
                )
            full = self.resolve(path)
            self._make_dirs(os.path.dirname(full))
            # O_NOFOLLOW: a symlink swapped in after the check is refused; O_NONBLOCK: a planted FIFO cannot hang us.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            with os.fdopen(os.open(full, flags, 0o644), "wb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise SandboxError(f"{path!r} is not a regular file")
                f.write(data)
            if self.owner:
                os.chown(full, *self.owner)

    def _make_dirs(self, directory: str) -> None:
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for path in reversed(missing):
            os.mkdir(path, 0o755)
            if self.owner:
                os.chown(path, *self.owner)

    def read(self, path: str) -> bytes:
        """The bytes of a regular file, refusing files over the size limit."""
        full = self.resolve(path)
        with os.fdopen(os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SandboxError(f"{path!r} is not a regular file")
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise SandboxError(f"{path!r} is over the {self.max_bytes}-byte file limit")
        return data


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


def remove_tree(path: str) -> None:
    """Delete a directory tree, even one whose directories sandboxed code made unreadable."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        # Sandboxed code may leave directories without write or search permission for their owner.
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)
