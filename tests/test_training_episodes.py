"""GRPO's rollout_func plays episodes through the one driver: concurrently, with tools, and failures recorded."""

from __future__ import annotations

import asyncio
import copy
import json
import math

import gymnasium as gym
import pytest

from aligngym.agents.local import SamplingConfig, chat_prompt_ids
from aligngym.agents.tiny import load_model_and_tokenizer
from aligngym.envs.base import StepResult, TextEnv
from aligngym.envs.registry import make, register
from aligngym.trainers.env_rollout import EnvRollout, prompt_key
from aligngym.trainers.policy_agent import TrainerPolicy

TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools: ' }}"
    "{% for tool in tools %}{{ tool['function']['name'] + ' ' }}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


class _Gathering(TextEnv):
    """Each turn waits until ``n`` episodes are in their env step at once: serialised steps never get there."""

    description = "test env: concurrent steps"
    inside = 0
    crowd: asyncio.Event

    def __init__(self, n: int = 3, fail_seed: int | None = None):
        super().__init__(max_turns=1)
        self.n, self.fail_seed = n, fail_seed

    def new_episode(self, options):
        return f"task {self.np_random.integers(100)}", {}

    async def aturn(self, action: str) -> StepResult:
        if self._seed == self.fail_seed:
            raise RuntimeError("the env broke on this seed")
        cls = type(self)
        cls.inside += 1
        if cls.inside >= self.n:
            cls.crowd.set()
        await asyncio.wait_for(cls.crowd.wait(), timeout=20)
        return StepResult("", 1.0, True, {"met": float(cls.inside)})

    async def areset(self, *, seed=None, options=None):
        self._seed = seed
        return await super().areset(seed=seed, options=options)


@pytest.fixture(autouse=True)
def gathering_env():
    """Registered for this module's tests only (the registry conformance tests cover real envs)."""
    from aligngym.envs import registry

    register("aligngym-test/Gathering-v0", _Gathering)
    _Gathering.inside, _Gathering.crowd = 0, asyncio.Event()
    yield
    registry._ENTRIES.pop("aligngym-test/Gathering-v0", None)
    gym.registry.pop("aligngym-test/Gathering-v0", None)


def _prompts(env_id: str, seeds: list[int], **env_kwargs):
    env = make(env_id, **env_kwargs).unwrapped
    prompts = []
    for seed in seeds:
        _, info = env.reset(seed=seed)
        prompts.append(info["messages"])
    return prompts, {prompt_key(p): (s, None) for p, s in zip(prompts, seeds, strict=True)}


def test_episodes_of_a_batch_step_concurrently(tiny):
    model, tok = tiny
    prompts, tasks = _prompts("aligngym-test/Gathering-v0", [0, 1, 2])
    rollout = EnvRollout("aligngym-test/Gathering-v0", {}, tasks, SamplingConfig(max_new_tokens=2))
    slots = rollout.play(model, tok, prompts)
    # the three env steps were in flight together (each waited for the others), and nothing failed
    assert [s.done for s in slots] == [True, True, True], [s.trajectory.error for s in slots]
    assert all(s.components["met"] >= 3 for s in slots)


def test_an_env_error_is_a_recorded_zero_advantage_sample(tiny, tmp_path):
    model, tok = tiny
    prompts, tasks = _prompts("aligngym-test/Gathering-v0", [0, 1, 2], n=2, fail_seed=1)
    failed = tmp_path / "failed.jsonl"
    rollout = EnvRollout(
        "aligngym-test/Gathering-v0", {"n": 2, "fail_seed": 1}, tasks, SamplingConfig(2), failed_path=failed
    )
    slots = rollout.play(model, tok, prompts + [prompts[1]])
    bad = [s for s in slots if not s.done]
    assert len(bad) == 2 and all(set(s.env_mask) == {0} for s in bad)  # nothing of theirs is trained on
    rows = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [r["error"] for r in rows] == ["RuntimeError: the env broke on this seed"] * 2
    assert rollout.failed == 2
    # NaN reward: TRL counts it unscorable (out of its group's baseline, zero advantage)
    assert all(math.isnan(s.reward) for s in bad) and not any(math.isnan(s.reward) for s in slots if s.done)


def test_tools_reach_the_chat_template_in_training(tiny):
    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = TOOLS_TEMPLATE + tok.chat_template
    prompts, tasks = _prompts("aligngym/ToolUse-v0", [0], max_turns=1)
    rollout = EnvRollout("aligngym/ToolUse-v0", {"max_turns": 1}, tasks, SamplingConfig(max_new_tokens=2))
    (slot,) = rollout.play(model, tok, prompts)
    schemas = make("aligngym/ToolUse-v0").unwrapped.tool_schemas
    with_tools = chat_prompt_ids(tok, prompts[0], tools=schemas)
    assert with_tools != chat_prompt_ids(tok, prompts[0])  # the template does render them
    assert slot.prompt_ids == with_tools


def test_a_failing_generation_fails_the_episodes_instead_of_hanging(tiny):
    _, tok = tiny
    policy = TrainerPolicy(tok, lambda contexts: [])  # returns no reply at all: a broken backend

    async def main():
        seats = [policy.seat(), policy.seat()]
        serving = asyncio.ensure_future(policy.serve())
        results = await asyncio.gather(
            *(seat.act([{"role": "user", "content": "hi"}]) for seat in seats), return_exceptions=True
        )
        for seat in seats:
            seat.end()
        with pytest.raises(RuntimeError, match="0 replies for 2 contexts"):
            await serving
        return results

    results = asyncio.run(asyncio.wait_for(main(), 30))
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_seat_that_never_asks_does_not_stall_the_others(tiny, monkeypatch):
    # A seat whose episode waits for a sandbox that the waiting seats hold would block every round.
    from aligngym.agents.base import AgentResponse
    from aligngym.trainers import policy_agent

    monkeypatch.setattr(policy_agent, "PATIENCE_S", 0.2)
    _, tok = tiny
    policy = TrainerPolicy(tok, lambda contexts: [AgentResponse("x", token_ids=[5]) for _ in contexts])

    async def main():
        asking, stuck = policy.seat(), policy.seat()
        serving = asyncio.ensure_future(policy.serve())
        reply = await asking.act([{"role": "user", "content": "hi"}])
        asking.end()
        stuck.end()
        await serving
        return reply

    assert asyncio.run(asyncio.wait_for(main(), 30)).text == "x"
