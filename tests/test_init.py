"""``aligngym init NAME``: a package that installs, lists, makes and passes its own conformance test."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from aligngym.cli import main

EXPECTED = {"pyproject.toml", "README.md", "pkgx/__init__.py", "pkgx/env.py", "tests/test_conformance.py"}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_init_writes_an_installable_package(tmp_path, capsys):
    assert main(["init", "pkgx", "--dir", str(tmp_path / "out" / "pkgx")]) == 0
    root = tmp_path / "out" / "pkgx"
    assert _files(root) == EXPECTED
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pkgx"]  # no staging directory left behind
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "pkgx"
    assert project["project"]["entry-points"]["aligngym.envs"] == {"pkgx/Guess-v0": "pkgx.env:GuessEnv"}
    assert "aligngym.check_conformance(ENV_ID)" in (root / "tests" / "test_conformance.py").read_text()
    out = capsys.readouterr().out
    assert "env id: pkgx/Guess-v0" in out and f"pip install -e {root}" in out


@pytest.mark.parametrize(
    "name, why",
    [
        ("Bad-Name", "must be lowercase letters, digits and '_'"),
        ("1pkg", "must be lowercase letters"),
        ("class", "must be lowercase letters"),
        ("aligngym_more", "reserved"),
        ("json", "standard-library module name"),
        ("numpy", "already importable here"),
    ],
)
def test_init_refuses_a_bad_name_before_writing(tmp_path, capsys, name, why):
    assert main(["init", name, "--dir", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"aligngym: error: package name {name!r}") and why in err
    assert list(tmp_path.iterdir()) == []


def test_init_never_writes_into_an_existing_directory(tmp_path, capsys):
    (tmp_path / "pkgx").mkdir()
    (tmp_path / "pkgx" / "mine.txt").write_text("keep")
    assert main(["init", "pkgx", "--dir", str(tmp_path / "pkgx")]) == 2
    assert capsys.readouterr().err == (
        f"aligngym: error: {str(tmp_path / 'pkgx')!r} already exists; aligngym init never writes into an existing path\n"
    )
    assert _files(tmp_path / "pkgx") == {"mine.txt"}


def test_the_scaffold_env_passes_its_own_tests_without_pip(tmp_path):
    """The entry point the pyproject declares, as a dist-info on the path (what pip would write), and the
    scaffold's own tests run against it; tests/test_init.py's slow test does the same through pip."""
    assert main(["init", "pkgx", "--dir", str(tmp_path / "pkgx")]) == 0
    root = tmp_path / "pkgx"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    meta = tmp_path / "site" / "pkgx-0.1.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pkgx\nVersion: {project['version']}\n")
    lines = [f"{k} = {v}" for k, v in project["entry-points"]["aligngym.envs"].items()]
    (meta / "entry_points.txt").write_text("[aligngym.envs]\n" + "\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path / "site")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


@pytest.mark.slow
def test_init_pip_install_then_list_make_and_test(tmp_path):
    """The README's promise: ``aligngym init mypkg && pip install -e mypkg && aligngym envs``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-m", "aligngym", "init", "pkgx"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    # --without-pip: the venv sees this interpreter's pip and setuptools (ensurepip would bring an old
    # setuptools without bdist_wheel), and installs nothing from an index.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    python = str(venv / "bin" / "python")

    def in_venv(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

    pip = in_venv("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "pkgx")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    listed = in_venv("-m", "aligngym", "envs")
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("pkgx/Guess-v0 ")]
    assert "Guess a seeded secret number" in line and line.endswith("[package pkgx 0.1.0]")
    made = in_venv(
        "-c", "import aligngym, gymnasium as gym; print(gym.make('pkgx/Guess-v0').reset(seed=0)[0])"
    )
    assert made.returncode == 0 and made.stdout.startswith("I picked an integer from 1 to 100."), made.stderr
    tested = in_venv("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=tmp_path / "pkgx")
    assert tested.returncode == 0 and "3 passed" in tested.stdout, tested.stdout + tested.stderr
    # Outside the venv the package does not exist: the test installed nothing into this interpreter.
    assert (
        "pkgx/"
        not in subprocess.run(
            [sys.executable, "-m", "aligngym", "envs"], cwd=tmp_path, env=env, capture_output=True, text=True
        ).stdout
    )
