"""The registry: one description per env (its class's), shown by `aligngym envs`; hints resolved once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from aligngym.cli import main
from aligngym.envs import StepResult, TextEnv, make, register, registered
from aligngym.envs.registry import EnvEntry, _class_descriptions, _resolve

BUILTINS = sorted(i for i in registered() if i.startswith("aligngym/"))


class Counted(TextEnv):
    """Say a word (the docstring's first line is the description when the class states none)."""

    def __init__(self, size: int = 3, max_turns: int = 1):
        super().__init__(max_turns=max_turns)
        self.size = size

    def new_episode(self, options):
        return "Say a word.", {}

    def turn(self, action):
        return StepResult(reward=1.0, terminated=True)


def test_an_entry_keeps_no_description_of_its_own():
    assert "description" not in {f.name for f in dataclasses.fields(EnvEntry)}


@pytest.mark.parametrize("env_id", BUILTINS)
def test_every_builtin_description_is_its_class_attribute(env_id):
    entry = registered()[env_id]
    cls = _resolve(entry.entry_point)
    own = next((vars(k)["description"] for k in cls.__mro__ if vars(k).get("description")), "")
    assert own.strip(), f"{cls.__name__} states no description"
    assert entry.description == own.strip()
    # `aligngym envs` reads it from the source without importing the module: the same text.
    module, _, name = entry.entry_point.partition(":")
    assert _class_descriptions(module)[name] == own


def test_envs_command_shows_each_class_description(capsys):
    assert main(["envs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for env_id in BUILTINS:
        assert lines[env_id].endswith(registered()[env_id].description), env_id


def test_listing_envs_imports_none_of_them(tmp_path):
    code = (
        "import sys\nfrom aligngym.cli import main\nmain(['envs'])\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m.startswith('aligngym.envs.')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    out = run.stdout
    assert "Seeded integer arithmetic" in out
    imported = out.split("IMPORTED", 1)[1]
    assert "social_sandbox" not in imported and "code_exec" not in imported, imported


def test_register_takes_no_second_description():
    with pytest.raises(TypeError, match="`description` attribute"):
        register("test/Described-v0", Counted, description="another copy")
    assert "test/Described-v0" not in registered()


def test_a_class_without_description_uses_its_docstring():
    register("test/Counted-v0", Counted)
    assert registered()["test/Counted-v0"].description.startswith("Say a word (the docstring")


def test_make_resolves_type_hints_once_per_registration(monkeypatch):
    calls = []
    real = typing.get_type_hints

    def counting(obj, *args, **kwargs):
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)
    register("test/Hinted-v0", Counted)
    for size in (1, 2, 3):
        assert make("test/Hinted-v0", size=size).unwrapped.size == size
    with pytest.raises(TypeError, match="size must be int"):
        make("test/Hinted-v0", size=2.5)  # the cached hints still check
    assert calls.count(Counted.__init__) == 1
    with pytest.warns(UserWarning, match="Overriding"):  # Gymnasium's note on re-registering
        register("test/Hinted-v0", Counted, max_turns=2)  # a new registration resolves afresh
    make("test/Hinted-v0", size=1)
    assert calls.count(Counted.__init__) == 2
