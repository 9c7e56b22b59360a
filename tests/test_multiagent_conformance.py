"""One conformance test over every multi-agent env in the registry: PettingZoo's API test, seeding, close."""

from __future__ import annotations

import asyncio

import pytest
from pettingzoo.test import parallel_api_test

import aligngym
from aligngym.envs.registry import registered

MULTI_AGENT = [i for i, e in registered().items() if e.multi_agent]


def test_registry_has_multi_agent_envs():
    assert "aligngym/Debate-v0" in MULTI_AGENT


@pytest.mark.parametrize("env_id", MULTI_AGENT)
def test_parallel_api(env_id):
    env = aligngym.make(env_id)
    parallel_api_test(env, num_cycles=50)
    env.close()


def _episode(env, seed):
    obs, infos = env.reset(seed=seed)
    trace = [obs]
    replies = ["I think the answer is 7. <quote>It</quote> agent_0: 5 - fine", "(B) 12", "[leave]"]
    turn = 0
    while env.agents:
        actions = {a: replies[(turn + i) % len(replies)] for i, a in enumerate(env.agents)}
        obs, rewards, terms, truncs, infos = env.step(actions)
        trace.append((obs, rewards, terms, truncs, {a: i["reward_components"] for a, i in infos.items()}))
        turn += 1
    return trace


@pytest.mark.parametrize("env_id", MULTI_AGENT)
def test_same_seed_same_episode(env_id):
    env = aligngym.make(env_id)
    assert _episode(env, 3) == _episode(env, 3)
    env.close()
    env.close()


@pytest.mark.parametrize("env_id", MULTI_AGENT)
def test_every_agent_gets_its_own_chat(env_id):
    env = aligngym.make(env_id)
    _, infos = env.reset(seed=0)
    assert set(infos) == set(env.possible_agents)
    actions = {a: f"message from {a}" for a in env.agents}
    _, rewards, *_, infos = asyncio.run(env.astep(actions))
    for agent, info in infos.items():
        assert info["messages"][1] == {"role": "assistant", "content": f"message from {agent}"}
        assert isinstance(rewards[agent], float)
