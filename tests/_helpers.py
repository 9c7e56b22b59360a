"""Small helpers shared by tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

#: Ids that cannot be built without a live server -> where they are checked instead.
NEEDS_A_SERVER = {
    "aligngym/OpenEnv-v0": "tests/test_openenv.py runs check_conformance against a live OpenEnv server",
}
#: Ids whose optional extra provides this module (``pip install -e ".[dev]"`` installs them all).
EXTRA_MODULE = {"aligngym/ReasoningGym-v0": "reasoning_gym", "aligngym/TextWorldGame-v0": "textworld"}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def standalone_ids() -> list:
    """Built-in and package ids that build here on their own, as pytest params; a missing extra is a skip."""
    from aligngym.envs.registry import registered

    params = []
    for env_id, entry in registered().items():
        # Ours and installed packages' only: ids other tests registered in this process are theirs to test.
        ours = env_id.startswith("aligngym/") or entry.package
        if env_id in NEEDS_A_SERVER or not ours:
            continue
        module = EXTRA_MODULE.get(env_id)
        missing = module is not None and not _installed(module)
        why = f"its extra is not installed ({module} missing): pip install -e '.[dev]'"
        params.append(pytest.param(env_id, id=env_id, marks=pytest.mark.skipif(missing, reason=why)))
    return params


def installed_standalone_ids() -> list[str]:
    """The ids of ``standalone_ids()`` whose extras are installed, for tests that loop over the registry."""
    return [p.values[0] for p in standalone_ids() if not any(m.args[0] for m in p.marks)]


def solve(messages):
    """The right answer to an Arithmetic-v0 prompt, parsed from our own prompt format."""
    a, op, b = re.fullmatch(r"(\d+)([+*-])(\d+)=", messages[0]["content"]).groups()
    return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])


def run_cli(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m aligngym ARGS...`` in a subprocess, output captured as text."""
    cmd = [sys.executable, "-m", "aligngym", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def docker_up() -> bool:
    """Whether a Docker daemon answers (tests that need one skip otherwise; .ci/dockerd.sh starts it)."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


#: Marks for a test (or a parameter) that needs the Docker daemon.
NEEDS_DOCKER = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not docker_up(), reason="no Docker daemon (docker info fails); start one: .ci/dockerd.sh"
    ),
]


def barrier_program(tag: str, i: int, n: int) -> str:
    """A run that checks in and waits (up to 25 s) until all ``n`` runs tagged ``tag`` have: only runs in
    flight together can all print ``i True``; one after another, the first would wait alone and say False."""
    return (
        "import os, time\n"
        f"open('{tag}-{i}', 'w').close()\n"
        "deadline = time.monotonic() + 25\n"
        f"while sum(f.startswith('{tag}-') for f in os.listdir('.')) < {n} and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"print({i}, sum(f.startswith('{tag}-') for f in os.listdir('.')) >= {n})\n"
    )


def pids_with(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker`` (container processes are host processes too)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def interpreter_dirs() -> list[str]:
    """Where this interpreter and its packages live (sandboxes bind them in read-only, wherever they are)."""
    import site

    found = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(sys.executable),
        *site.getsitepackages(),
    }
    return sorted({os.path.realpath(p) for p in found})


def interpreter_tmp_entries() -> list[str]:
    """The names a sandbox's fresh ``/tmp`` shows anyway: the top folder of an interpreter (a venv) under /tmp."""
    return sorted({p.split("/")[2] for p in interpreter_dirs() if p.startswith("/tmp/")})
