"""Packaging promises: one namespace, folders mapped into it, new files visible in an editable install."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", ["envs", "agents", "feedback", "trainers", "sandboxes"])
def test_folders_are_subpackages_of_aligngym(folder):
    module = importlib.import_module(f"aligngym.{folder}")
    assert Path(module.__file__).resolve().parent == ROOT / folder


def test_no_generic_top_level_names_installed(tmp_path):
    """Outside the checkout, `agents`, `envs`, ... must not resolve to our folders (openai-agents owns `agents`)."""
    code = (
        "import importlib.util, sys\n"
        "for name in ('agents', 'envs', 'feedback', 'trainers', 'sandboxes'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    if spec is not None and spec.origin and spec.origin.startswith(sys.argv[1]):\n"
        "        print(name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_new_file_is_importable_without_reinstall():
    name = f"_probe_{uuid.uuid4().hex[:8]}"
    path = ROOT / "envs" / f"{name}.py"
    path.write_text("VALUE = 42\n")
    try:
        importlib.invalidate_caches()
        assert importlib.import_module(f"aligngym.envs.{name}").VALUE == 42
    finally:
        path.unlink()
