"""The docker sandbox image, built here without a registry: debootstrap a Debian root, import it, add a layer.

``python`` picks the Debian release whose ``python3`` it is (3.11: bookworm, 3.13: trixie); ``packages`` are
pip-installed on the host as manylinux wheels for that Python and copied in, so the build needs PyPI but no
network inside Docker. The debootstrap tarball is cached under ``~/.cache/aligngym`` (delete it to refresh).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .base import SandboxError

DEFAULT_IMAGE = "aligngym-sandbox:latest"
BASE_REPOSITORY = "aligngym-sandbox-base"
#: Debian packages of the base root (python3 for code, git for the Terminal tasks). Changing the list means
#: bumping ``_ROOTFS_VERSION``: it names the cached tarball, the base tag and the image label, so old builds
#: are redone instead of reused.
_ROOTFS_PACKAGES = ("python3", "git")
_ROOTFS_VERSION = "2"
#: Python version -> the Debian release that ships it as ``python3`` (and that release's glibc, for wheels).
DEBIAN_RELEASES: dict[str, tuple[str, int]] = {"3.11": ("bookworm", 36), "3.13": ("trixie", 41)}
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Trimmed from the root: documentation and apt state a sandbox never needs.
_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)

Progress = Callable[[str], object]


def cache_dir() -> Path:
    """Where the debootstrap tarballs are kept (``$XDG_CACHE_HOME/aligngym``, else ``~/.cache/aligngym``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(root, "aligngym")
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror() -> str:
    """``$ALIGNGYM_DEBIAN_MIRROR``, else the Debian mirror apt is configured with here, else deb.debian.org."""
    if mirror := os.environ.get("ALIGNGYM_DEBIAN_MIRROR"):
        return mirror
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if source.suffix not in (".list", ".sources", ""):
            continue
        with contextlib.suppress(OSError):
            for line in source.read_text().splitlines():
                for word in line.split():
                    if word.startswith(("http://", "https://")) and word.rstrip("/").endswith("/debian"):
                        return word.rstrip("/")
    return _FALLBACK_MIRROR


def _release(python: str) -> tuple[str, int]:
    if python not in DEBIAN_RELEASES:
        supported = ", ".join(f"{v} ({r})" for v, (r, _) in DEBIAN_RELEASES.items())
        raise ValueError(
            f"no Debian release ships python {python}; the image's python is the release's python3: {supported}"
        )
    return DEBIAN_RELEASES[python]


def _client():  # -> docker.DockerClient
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:
        raise SandboxError(f"cannot reach the Docker daemon ({exc}); start it (e.g. .ci/dockerd.sh)") from exc
    return client


def _labels(client, tag: str) -> dict[str, str] | None:
    """The labels of a local image, None when there is no such image."""
    import docker

    try:
        return client.api.inspect_image(tag)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return None


def _image_id(client, tag: str) -> str | None:
    import docker

    try:
        return client.api.inspect_image(tag)["Id"]
    except docker.errors.ImageNotFound:
        return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    # Parallel test workers (pytest -n) all ask for the image at once; one builds, the others then find it.
    with open(cache_dir() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_tarball(release: str, progress: Progress = print) -> Path:
    """The cached tarball of a minimal Debian ``release`` root with python3 and git, debootstrapped if missing."""
    arch = _DEB_ARCH.get(platform.machine(), platform.machine())
    path = cache_dir() / f"rootfs-{release}-{arch}-v{_ROOTFS_VERSION}.tar"
    if path.exists():
        return path
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise SandboxError(
            "building the sandbox image needs debootstrap, run as root (apt-get install debootstrap)"
        )
    mirror = debian_mirror()
    progress(f"debootstrap {release} ({arch}) from {mirror}; cached in {path}")
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="rootfs-") as tmp:
        root = os.path.join(tmp, "root")
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(_ROOTFS_PACKAGES)}",
            f"--arch={arch}",
            release,
            root,
            mirror,
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SandboxError(
                f"debootstrap failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}"
            )
        for trimmed in _TRIM:
            shutil.rmtree(os.path.join(root, trimmed), ignore_errors=True)
        partial = os.path.join(tmp, "rootfs.tar")
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", partial, "."], check=True)
        os.replace(partial, path)
    return path


def _pip_wheels(packages: tuple[str, ...], python: str, glibc: int, target: str) -> None:
    """Install ``packages`` as manylinux wheels for the image's Python into ``target`` (no pip in the image)."""
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc + 1)]
    platforms.append(f"manylinux2014_{machine}")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    argv += ["--target", target, "--only-binary=:all:", "--implementation", "cp", "--python-version", python]
    for tag in platforms:
        argv += ["--platform", tag]
    done = subprocess.run([*argv, *packages], capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"pip could not fetch wheels for {', '.join(packages)}: {done.stderr[-2000:]}")


def base_image(python: str = "3.11") -> str:
    """The bare debootstrap image ``build_image`` imports for ``python`` (no WORKDIR, USER or labels)."""
    return f"{BASE_REPOSITORY}:{_release(python)[0]}-v{_ROOTFS_VERSION}"


def build_image(
    tag: str = DEFAULT_IMAGE,
    python: str = "3.11",
    packages: Iterable[str] = (),
    rebuild: bool = False,
    progress: Progress = print,
) -> str:
    """Build the sandbox image ``tag`` (skipped when it exists with the same python and packages); returns ``tag``."""
    release, glibc = _release(python)
    packages = tuple(packages)
    wanted = {
        "aligngym.sandbox": _ROOTFS_VERSION,
        "aligngym.python": python,
        "aligngym.packages": ",".join(packages),
    }
    with _build_lock():
        client = _client()
        labels = _labels(client, tag)
        if not rebuild and labels is not None and all(labels.get(k) == v for k, v in wanted.items()):
            progress(f"{tag}: up to date")
            return tag
        started = time.monotonic()
        base = base_image(python)
        # Images the tags named before: untagged by this build, removed after it unless a container uses them.
        retired = [_image_id(client, tag)]
        if rebuild or _labels(client, base) is None:
            retired.append(_image_id(client, base))
            tarball = rootfs_tarball(release, progress)
            progress(f"importing {tarball.name} as {base}")
            client.api.import_image_from_file(
                str(tarball), repository=BASE_REPOSITORY, tag=base.partition(":")[2]
            )
        with tempfile.TemporaryDirectory(prefix="aligngym-image-") as context:
            lines = [f"FROM {base}", "ENV LANG=C.UTF-8"]
            if packages:
                progress(f"pip wheels for python {python}: {', '.join(packages)}")
                _pip_wheels(packages, python, glibc, os.path.join(context, "site"))
                lines.append(f"COPY site/ /usr/local/lib/python{python}/dist-packages/")
            lines += ["WORKDIR /sandbox", "USER 65534:65534"]
            lines += [f'LABEL "{k}"="{v}"' for k, v in wanted.items()]
            Path(context, "Dockerfile").write_text("\n".join(lines) + "\n")
            import docker

            try:
                client.images.build(path=context, tag=tag, rm=True, forcerm=True, pull=False)
            except docker.errors.BuildError as exc:
                raise SandboxError(f"docker build of {tag} failed: {exc}") from exc
        current = {_image_id(client, tag), _image_id(client, base)}
        for old in retired:
            if old and old not in current:
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_image(old)
        progress(f"built {tag} (python {python}, {release}) in {time.monotonic() - started:.1f}s")
    return tag


def ensure_image(
    tag: str = DEFAULT_IMAGE,
    python: str = "3.11",
    packages: Iterable[str] = (),
    progress: Progress | None = None,
) -> str:
    """``tag``, built first if it is missing or was built with another python or other packages."""
    return build_image(tag, python, packages, rebuild=False, progress=progress or (lambda _: None))
