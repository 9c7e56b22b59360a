"""The public conformance check over the whole registry: every registered env is checked for free."""

from __future__ import annotations

import inspect

import pytest
from _helpers import EXTRA_MODULE, NEEDS_A_SERVER, standalone_ids

import aligngym
from aligngym.envs.registry import registered


def _kwargs(env_id: str) -> dict:
    """Three turns where the env takes ``max_turns``, so the same-seed check also covers a multi-turn episode."""
    entry = registered()[env_id]
    if entry.multi_agent:
        return {}
    return {"max_turns": 3} if "max_turns" in inspect.signature(entry._factory).parameters else {}


def test_registry_is_populated_on_import():
    assert "aligngym/CodeExec-v0" in aligngym.registered()
    assert "aligngym/Arithmetic-v0" in aligngym.registered()
    assert any(e.multi_agent for e in registered().values()) and any(
        not e.multi_agent for e in registered().values()
    )
    for entry in registered().values():
        assert entry.description, f"{entry.id} has no description for `aligngym envs`"


def test_every_exclusion_names_a_registered_id():
    # A renamed or removed id must not leave a stale exclusion that would hide its successor.
    assert set(NEEDS_A_SERVER) | set(EXTRA_MODULE) <= set(registered())


@pytest.mark.parametrize("env_id", standalone_ids())
def test_conformance(env_id):
    aligngym.check_conformance(env_id, _kwargs(env_id))


def test_readme_registration_example_runs():
    """The README promises a complete registration example under 20 lines; run it as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "register(" in b)
    assert len(block.strip().splitlines()) < 20
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # our own documentation, not untrusted code
    env = namespace["env"]
    obs, info = env.reset(seed=0)
    word = info["word"]
    assert env.step("wrong")[3] is False
    _, reward, terminated, _, _ = env.step(word)
    assert reward == 1.0 and terminated
