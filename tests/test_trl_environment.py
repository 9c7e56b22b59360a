"""Every aligngym environment as a TRL ``environment_factory`` class, and TRL's GRPOTrainer running it."""

from __future__ import annotations

import inspect
import math

import pytest
from transformers.utils import get_json_schema

import aligngym  # noqa: F401  (registers the envs)
from aligngym.trainers import as_trl_environment


def _tools(cls) -> list[str]:
    return sorted(
        n
        for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
        if not n.startswith("_") and n not in ("reset", "get_reward")
    )


def test_plain_env_becomes_one_respond_tool_with_the_env_reward():
    cls = as_trl_environment("aligngym/Arithmetic-v0", max_operand=4)
    assert _tools(cls) == ["respond"]
    env = cls()
    assert env.reset(seed=2, prompt=[{"role": "user", "content": "..."}]) is None  # the prompt already has it
    answer = env.env.answer
    assert env.respond(message="no idea") == "" and env.get_reward() == 0.0  # single-turn: the answer ends it
    assert env.respond(message=str(answer)).startswith("The episode is over")
    env.reset(seed=2, prompt=[{"role": "user", "content": "..."}])
    env.respond(message=str(answer))
    assert env.get_reward() == 1.5
    fresh = cls()
    assert (
        fresh.reset(seed=2) == fresh.env.messages[-1]["content"]
    )  # without a prompt column: the observation


def test_tool_env_exposes_its_tools_with_schemas_and_submit_answer():
    cls = as_trl_environment("aligngym/ToolUse-v0")
    assert _tools(cls) == ["calculator", "lookup", "python", "search", "sql", "submit_answer"]
    env = cls()
    env.reset(seed=3, prompt=[{"role": "user", "content": "..."}])
    schema = get_json_schema(env.search)["function"]
    assert schema["name"] == "search" and schema["parameters"]["required"] == ["query"]
    assert env.calculator(expression="2+3*4") == "14"
    assert env.calculator(expression="__import__('os')").startswith("Error")  # a failed call, not a crash
    env.submit_answer(answer=str(env.env.task.answer))
    # answer 1 + 0.1 * format (both calls well-formed) - 0.05 * one call that failed in the tool
    assert env.get_reward() == pytest.approx(1.0 + 0.1 - 0.05)


def test_multi_agent_envs_are_refused():
    with pytest.raises(ValueError, match="multi-agent"):
        as_trl_environment("aligngym/Debate-v0")


@pytest.mark.slow
def test_trl_grpo_trainer_runs_an_aligngym_environment(tmp_path):
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    from aligngym.agents.tiny import load_model_and_tokenizer
    from aligngym.trainers.grpo import env_prompt_dataset

    model, tokenizer = load_model_and_tokenizer("tiny")
    # TRL parses tool calls with a known template's response schema; the tiny vocabulary covers ChatML.
    tokenizer.chat_template = qwen2_5_chat_template
    dataset, _, _ = env_prompt_dataset("aligngym/Arithmetic-v0", {"max_operand": 4}, 16)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=as_trl_environment("aligngym/Arithmetic-v0", max_operand=4),
    )
    assert [t.__name__ for t in trainer._env_tools[None]] == ["respond"]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert "rewards/Arithmetic_v0Environment/mean" in logged[0]  # the env's get_reward is the reward


def test_an_env_error_is_the_tools_reply_not_a_crash_in_trl():
    import gymnasium as gym

    from aligngym.envs import registry
    from aligngym.envs.base import StepResult, TextEnv

    class Breaks(TextEnv):
        description = "test env: its turn raises"

        def __init__(self):
            super().__init__(max_turns=3)

        def new_episode(self, options):
            return "say anything", {}

        def turn(self, action: str) -> StepResult:
            raise RuntimeError("the grader crashed")

    registry.register("aligngym-test/Breaks-v0", Breaks)
    try:
        env = as_trl_environment("aligngym-test/Breaks-v0")()
        assert env.reset(seed=0) == "say anything"
        assert env.respond(message="hi") == "The environment failed: RuntimeError: the grader crashed"
        assert math.isnan(env.get_reward()) and env.done  # unscorable for TRL: zero advantage, never a prize
        assert (
            env._episode.trajectory.error == "RuntimeError: the grader crashed"
        )  # recorded as rollout would
        assert env.reset(seed=1) == "say anything"  # the next episode starts afresh
    finally:
        registry._ENTRIES.pop("aligngym-test/Breaks-v0", None)
        gym.registry.pop("aligngym-test/Breaks-v0", None)
