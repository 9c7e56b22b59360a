"""One conformance test over the whole registry: every env gets checked for free."""

from __future__ import annotations

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import aligngym
from aligngym.envs.registry import registered

SINGLE_AGENT = [i for i, e in registered().items() if not e.multi_agent]
# Fixed replies so two runs with the same seed can be compared turn by turn.
SCRIPTED_ACTIONS = ["42", "```python\ndef f(x):\n    return x\n```", "I do not know.", ""]


def test_registry_is_populated_on_import():
    assert "aligngym/CodeExec-v0" in aligngym.registered()
    assert "aligngym/Arithmetic-v0" in aligngym.registered()
    for entry in registered().values():
        assert entry.description, f"{entry.id} has no description for `aligngym envs`"


def _episode(env, seed):
    obs, info = env.reset(seed=seed)
    trace = [(obs, info["messages"])]
    for action in SCRIPTED_ACTIONS:
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(obs, str) and isinstance(info["messages"], list)
        assert isinstance(info["reward_components"], dict)
        trace.append((obs, reward, terminated, truncated, info["reward_components"]))
        if terminated or truncated:
            break
    return trace


@pytest.mark.parametrize("env_id", SINGLE_AGENT)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", SINGLE_AGENT)
def test_same_seed_same_episode(env_id):
    env = gym.make(env_id, max_turns=3)
    first = _episode(env, seed=7)
    second = _episode(env, seed=7)
    assert first == second
    assert env.observation_space.contains(first[0][0])
    env.close()
    env.close()  # closing twice is harmless


@pytest.mark.parametrize("env_id", SINGLE_AGENT)
def test_text_spaces_accept_any_unicode(env_id):
    env = gym.make(env_id)
    text = "Hello, world! ¿Qué tal? 你好 — naïve café ✓\n\tend"
    assert env.observation_space.contains(text)
    assert env.action_space.contains(text)
    assert not env.action_space.contains(b"bytes")
    env.close()


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
