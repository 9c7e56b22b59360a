"""The verifiers column of ``rollout_throughput.py``: its own virtualenv, and a run of ``_verifiers_worker.py``.

The venv (default ``~/.cache/aligngym-bench/verifiers-venv``) is created with ``python -m venv`` on first
use, gets ``verifiers==VERSION`` from PyPI, and is reused while it imports that version. verifiers 0.4.0
needs no torch (its ``renderers`` dependency brings transformers without it), so the venv is a plain one,
not ``--system-site-packages``: nothing of aligngym's environment leaks into verifiers' measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: The version the benchmark was written and checked against (its ``verifiers.v1`` API).
VERSION = "0.4.0"
DEFAULT_VENV = Path.home() / ".cache" / "aligngym-bench" / "verifiers-venv"
WORKER = Path(__file__).with_name("_verifiers_worker.py")


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_version(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.metadata as m; print(m.version('verifiers'))"
    got = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return got.returncode == 0 and got.stdout.strip() == VERSION


def ensure_venv(venv: Path = DEFAULT_VENV) -> tuple[Path | None, str]:
    """The venv's python with verifiers installed (creating it if needed), or ``None`` and why not."""
    python = _python(venv)
    if _has_version(python):
        return python, f"verifiers {VERSION} (venv {venv}, reused)"
    print(f"installing verifiers=={VERSION} into {venv} (once) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True
            )
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"verifiers=={VERSION}"],
            check=True,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        tail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()[-1:]
        return None, f"verifiers install failed ({'; '.join(tail) or type(exc).__name__}); skipping it"
    if not _has_version(python):
        return None, f"verifiers {VERSION} not importable in {venv} after install; skipping it"
    return python, f"verifiers {VERSION} (venv {venv}, installed now)"


def run_worker(python: Path, base_url: str, episodes: int, concurrency: int) -> dict | None:
    """One measured run (after an untimed warm-up run) in the venv; the worker's JSON row, or None."""
    cmd = [python, str(WORKER), "--base-url", base_url, "--episodes", str(episodes)]
    cmd += ["--concurrency", str(concurrency), "--warmup", str(concurrency)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        err = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"verifiers worker failed (exit {done.returncode}): {err}", flush=True)
        return None
    return json.loads(lines[-1])
