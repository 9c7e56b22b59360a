"""Env packages: ids declared as entry points are found without an import, made lazily, refused loudly when
they are malformed or would take an id that is not theirs; rows record which package an env came from.

No pip here: a package is a ``*.dist-info`` directory (METADATA, entry_points.txt) beside its modules in a
temporary directory put on ``PYTHONPATH`` of a subprocess (tests/test_init.py installs a real one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import aligngym
from aligngym.envs import register, registry
from aligngym.envs.packages import distribution_of, scan
from aligngym.envs.registry import EnvPackageError
from aligngym.episode import provenance


def fake_dist(site: Path, name: str, version: str, groups: dict, *, egg: bool = False) -> Path:
    """Write the metadata of distribution ``name`` declaring ``groups`` ({group: {entry name: value}})."""
    meta = site / (f"{name}.egg-info" if egg else f"{name.replace('-', '_')}-{version}.dist-info")
    meta.mkdir(parents=True)
    header = "PKG-INFO" if egg else "METADATA"
    (meta / header).write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nText: not a header\n"
    )
    sections = [f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items()]
    (meta / "entry_points.txt").write_text("[console_scripts]\nfake = fake:main\n\n" + "\n".join(sections))
    return meta


def single(**eps: str) -> dict:
    return {"aligngym.envs": dict(eps)}


# -- scan: what a distribution's metadata declares, checked, without an import ---------------------------------


def test_scan_reads_the_declarations_and_the_package(tmp_path):
    fake_dist(
        tmp_path,
        "Fake-Pkg",
        "1.2",
        {
            **single(**{"fake/Echo-v0": "fake_pkg.env:Echo"}),
            "aligngym.multi_agent_envs": {"fake/Pair-v0": "fake_pkg.pair:Pair"},
        },
    )
    fake_dist(tmp_path, "eggy", "0.3", single(**{"eggy/Egg-v1": "eggy:EggEnv"}), egg=True)
    (tmp_path / "unrelated-1.0.dist-info").mkdir()  # no entry points: skipped
    found = scan([str(tmp_path)])
    assert found.problems == []
    assert {(e.id, e.value, e.multi_agent, e.package, e.version) for e in found.envs} == {
        ("fake/Echo-v0", "fake_pkg.env:Echo", False, "Fake-Pkg", "1.2"),
        ("fake/Pair-v0", "fake_pkg.pair:Pair", True, "Fake-Pkg", "1.2"),
        ("eggy/Egg-v1", "eggy:EggEnv", False, "eggy", "0.3"),
    }


@pytest.mark.parametrize(
    "env_id, value, why",
    [
        ("aligngym/Arithmetic-v0", "evil.env:Grader", "the namespace 'aligngym' is reserved"),
        ("AlignGym/Arithmetic-v0", "evil.env:Grader", "the namespace 'AlignGym' is reserved"),
        ("aligngym-official/Arithmetic-v0", "evil.env:Grader", "is reserved"),
        ("\u0430ligngym/Arithmetic-v0", "evil.env:Grader", "an id must be ASCII"),  # Cyrillic "а"
        ("Arithmetic-v0", "evil.env:Grader", "an id must be ASCII 'namespace/Name-v0'"),
        ("evil/Run-v0", "evil.env", "the value must be 'module:Class'"),
        ("evil/Run-v0", "evil.env:Env [extra]", "the value must be 'module:Class'"),
        ("evil/Run-v0", "evil.env:Env; import os", "the value must be 'module:Class'"),
        ("phys2d/CartPole-v0", "evil.env:Env", "that id is already registered"),
    ],
)
def test_scan_refuses_a_declaration_naming_the_package(tmp_path, env_id, value, why):
    fake_dist(tmp_path, "evil", "6.6", single(**{env_id: value, "evil/Fine-v0": "evil.env:Fine"}))
    found = scan([str(tmp_path)], taken={"phys2d/CartPole-v0"})
    assert [e.id for e in found.envs] == ["evil/Fine-v0"]  # the others of the package still register
    ((refused_id, line),) = found.problems
    assert refused_id == env_id and "\n" not in line
    assert (
        line.startswith(f"ignoring entry point {env_id!r} = {value!r} of package evil 6.6: ") and why in line
    )


def test_an_id_two_packages_declare_is_refused_for_both(tmp_path):
    fake_dist(tmp_path, "first", "1.0", single(**{"shared/Env-v0": "first.env:Env"}))
    fake_dist(tmp_path, "second", "2.0", single(**{"shared/Env-v0": "second.env:Env"}))
    found = scan([str(tmp_path)])
    assert found.envs == []
    assert found.problems == [
        (
            "shared/Env-v0",
            "ignoring entry point 'shared/Env-v0': declared more than once (by first 1.0, second 2.0)",
        )
    ]


def test_a_shadowed_copy_of_a_package_declares_nothing(tmp_path):
    # As for imports, the first copy of a distribution on the path is the installed one.
    fake_dist(tmp_path / "a", "pkg", "2.0", single(**{"pkg/New-v0": "pkg.env:Env"}))
    fake_dist(tmp_path / "b", "pkg", "1.0", single(**{"pkg/Old-v0": "pkg.env:Env"}))
    found = scan([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "missing")])
    assert [(e.id, e.version) for e in found.envs] == [("pkg/New-v0", "2.0")] and found.problems == []


# -- the whole path: import aligngym, list, make, run, record ---------------------------------------------------

FAKE_ENV = '''
from aligngym.envs import StepResult, TextEnv
from aligngym.envs.multi_agent import MultiAgentTextEnv, RoundResult


class Echo(TextEnv):
    """Say the seeded word back."""

    description = "Echo a seeded word\\x1b[2K\\raligngym/Arithmetic-v0  single-agent  spoofed line"
    success_component = "correct"

    def new_episode(self, options):
        self.word = str(self.np_random.integers(0, 1000))
        return f"Say {self.word}.", {}

    def turn(self, action):
        correct = float(action.strip() == self.word)
        return StepResult("", correct, True, components={"correct": correct})


class Pair(MultiAgentTextEnv):
    """Two seats, one round, nothing to win."""

    def __init__(self):
        super().__init__(["a", "b"], max_rounds=1)

    def new_episode(self, options):
        return {"a": "hi", "b": "hi"}

    async def play_round(self, actions):
        return RoundResult(observations={"a": "", "b": ""}, rewards={"a": 0.0, "b": 0.0})
'''

SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib, io, json, sys
    import gymnasium as gym
    import aligngym
    from aligngym.agents.scripted import ScriptedAgent
    from aligngym.cli import main

    out = {"imported_on_import": "fakepkg" in sys.modules}
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        main(["envs"])
    out["listing"] = listing.getvalue().splitlines()
    out["imported_on_listing"] = sorted(m for m in sys.modules if m.startswith("fakepkg"))
    out["gym_make"] = type(gym.make("fake/Echo-v0").unwrapped).__name__
    out["multi"] = type(aligngym.make("fake/Pair-v0")).__name__
    out["builtin"] = type(aligngym.make("aligngym/Arithmetic-v0").unwrapped).__module__
    for env_id in ("fake/Broken-v0", "fake/Bad-v0", "fake/Misfiled-v0", "aligngym/Shadow-v0"):
        try:
            aligngym.make(env_id)
        except Exception as exc:
            out[env_id] = f"{type(exc).__name__}: {exc}"
    try:
        gym.make("fake/Pair-v0")
    except Exception as exc:
        out["gym_make_multi"] = str(exc)
    aligngym.check_conformance("fake/Echo-v0")
    aligngym.check_conformance("fake/Pair-v0")
    asyncio.run(aligngym.rollout("fake/Echo-v0", ScriptedAgent(["1"]), episodes=1, out="rows.jsonl", progress=False))
    row = json.loads(open("rows.jsonl").readline())
    out["row"] = [row["env_package"], row["env_package_version"], row["aligngym_version"]]
    print(json.dumps(out))
    """
)


@pytest.fixture
def fake_site(tmp_path):
    """A directory holding package ``fakepkg`` 1.2 (its modules and metadata), with good and bad declarations."""
    site = tmp_path / "site"
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_text("raise RuntimeError('fakepkg/__init__ ran')\n")
    (site / "fakepkg" / "env.py").write_text(FAKE_ENV)
    fake_dist(
        site,
        "fakepkg",
        "1.2",
        {
            "aligngym.envs": {
                "fake/Echo-v0": "fakepkg.env:Echo",
                "fake/Broken-v0": "fakepkg.missing:Nope",
                "fake/Bad-v0": "not a value",
                "fake/Misfiled-v0": "fakepkg.env:Pair",
                "aligngym/Arithmetic-v0": "fakepkg.env:Echo",
                "aligngym/Shadow-v0": "fakepkg.env:Echo",
            },
            "aligngym.multi_agent_envs": {"fake/Pair-v0": "fakepkg.env:Pair"},
        },
    )
    return site


def _run(args: list[str], site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=300
    )


def test_a_package_env_is_listed_made_checked_and_recorded(fake_site, tmp_path):
    # fakepkg's __init__ raises: any import of the package before its env is made fails the run.
    (fake_site / "fakepkg" / "__init__.py").write_text("")
    run = _run(["-c", SCRIPT], fake_site, tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["imported_on_import"] is False and out["imported_on_listing"] == []
    (echo,) = [line for line in out["listing"] if line.startswith("fake/Echo-v0 ")]
    assert echo.endswith("[package fakepkg 1.2]") and "single-agent" in echo
    assert not any(c in "".join(out["listing"]) for c in "\x1b\r"), "a description redrew the terminal"
    assert any(line.startswith("fake/Pair-v0 ") and "multi-agent" in line for line in out["listing"])
    assert (out["gym_make"], out["multi"], out["builtin"]) == ("Echo", "Pair", "aligngym.envs.arithmetic")
    assert out["fake/Broken-v0"] == (
        "EnvPackageError: fake/Broken-v0: cannot load 'fakepkg.missing:Nope' from package fakepkg 1.2: "
        "ModuleNotFoundError: No module named 'fakepkg.missing'"
    )
    assert out["fake/Bad-v0"].startswith(
        "EnvPackageError: fake/Bad-v0 is not available: ignoring entry point"
    )
    assert "declare it under 'aligngym.multi_agent_envs'" in out["fake/Misfiled-v0"]
    assert "reserved for aligngym's built-in environments" in out["aligngym/Shadow-v0"]
    assert "use aligngym.make('fake/Pair-v0', ...)" in out["gym_make_multi"]
    assert out["row"] == ["fakepkg", "1.2", aligngym.__version__]
    # One line per refused declaration, naming the package; nothing else on stderr.
    warnings = [line for line in run.stderr.splitlines() if line.startswith("aligngym: warning: ")]
    assert len(warnings) == 3 and all("of package fakepkg 1.2: " in w for w in warnings), run.stderr


def test_listing_imports_no_package_and_a_broken_package_breaks_nothing(fake_site, tmp_path):
    # fakepkg's __init__ raises: listing must not run it, and built-ins still list and run.
    run = _run(["-m", "aligngym", "envs"], fake_site, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "fake/Echo-v0 " in run.stdout and "aligngym/Arithmetic-v0 " in run.stdout
    assert "fakepkg/__init__ ran" not in run.stderr
    cli = _run(
        [
            "-m",
            "aligngym",
            "rollout",
            "fake/Echo-v0",
            "--model",
            "tiny",
            "--episodes",
            "1",
            "--out",
            "x.jsonl",
        ],
        fake_site,
        tmp_path,
    )
    assert cli.returncode == 2 and cli.stderr.splitlines()[-1] == (
        "aligngym: error: fake/Echo-v0: cannot load 'fakepkg.env:Echo' from package fakepkg 1.2: "
        "RuntimeError: fakepkg/__init__ ran"
    )


def test_entry_points_can_be_turned_off(fake_site, tmp_path):
    run = _run(["-m", "aligngym", "envs"], fake_site, tmp_path, ALIGNGYM_ENTRY_POINTS="0")
    assert run.returncode == 0 and "fake/" not in run.stdout and run.stderr == ""


# -- in this process: built-ins cannot be replaced; rows say where an env came from -----------------------------


def test_code_cannot_replace_a_builtin_id():
    with pytest.raises(
        ValueError, match="aligngym/Arithmetic-v0 is a built-in environment and cannot be replaced"
    ):
        register("aligngym/Arithmetic-v0", "somewhere.else:Grader")
    assert registry.spec("aligngym/Arithmetic-v0").entry_point == "aligngym.envs.arithmetic:ArithmeticEnv"


def test_make_refuses_a_builtin_whose_gymnasium_entry_was_replaced():
    saved = gym.registry["aligngym/Arithmetic-v0"]
    gym.register("aligngym/Arithmetic-v0", entry_point="tests.elsewhere:Grader")  # bypasses our register()
    try:
        with pytest.raises(EnvPackageError, match="no longer points at aligngym's own environment"):
            aligngym.make("aligngym/Arithmetic-v0")
    finally:
        gym.registry["aligngym/Arithmetic-v0"] = saved
    assert aligngym.make("aligngym/Arithmetic-v0") is not None


def test_provenance_names_the_class_distribution():
    assert provenance(aligngym.make("aligngym/Arithmetic-v0")) == (
        "aligngym",
        aligngym.__version__,
        aligngym.__version__,
    )
    assert distribution_of("yaml.constructor")[0] == "PyYAML"  # a module whose distribution has another name
    assert distribution_of("__main__") == ("", "") and distribution_of("no_such_module_here") == ("", "")
