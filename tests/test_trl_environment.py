"""Every aligngym environment as a TRL ``environment_factory`` class, and TRL's GRPOTrainer running it."""

from __future__ import annotations

import inspect
import math

import pytest
from transformers.utils import get_json_schema

import aligngym  # noqa: F401  (registers the envs)
from aligngym.trainers import as_trl_environment, env_prompt_dataset


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


def _grpo_args(tmp_path, **overrides):
    from trl import GRPOConfig

    base = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 16,
    }
    return GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        **{**base, **overrides},
    )


def _tiny_policy():
    """The tiny policy with its own chat template; sized here so other tests' defaults do not change this one."""
    from aligngym.agents.tiny import TinyConfig, build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    size = TinyConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return build_tiny_model(size, tokenizer), tokenizer


@pytest.mark.slow
def test_trl_grpo_trainer_accepts_the_tiny_template_and_takes_the_env_reward(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOTrainer

    model, tokenizer = _tiny_policy()
    dataset, _, _ = env_prompt_dataset("aligngym/Arithmetic-v0", {"max_operand": 4}, 16)
    trainer = GRPOTrainer(
        model=model,
        args=_grpo_args(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=as_trl_environment("aligngym/Arithmetic-v0", max_operand=4),
    )
    assert trainer.chat_template is None  # TRL kept the tiny template: no training-template replacement
    assert [t.__name__ for t in trainer._env_tools[None]] == ["respond"]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert "rewards/Arithmetic_v0Environment/mean" in logged[0]  # the env's get_reward is the reward


ADD_CALLS: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    ADD_CALLS.append((a, b))
    return a + b


def _teach_tool_call(model, tokenizer, prompts: list[list[dict]], tools: list, call: dict) -> float:
    """Supervised steps on ``prompt -> call`` (assistant tokens only) until the call is all but certain."""
    import torch

    chats = [p + [{"role": "assistant", "content": "", "tool_calls": [call]}] for p in prompts]
    batch = tokenizer.apply_chat_template(
        chats,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        padding=True,
        return_tensors="pt",
    )
    labels = batch["input_ids"].masked_fill(batch["assistant_masks"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    value = math.inf
    for _ in range(200):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        value = loss.item()
        if value < 0.05:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return value


@pytest.mark.slow
def test_trl_grpo_trainer_runs_the_tool_calls_the_tiny_model_writes(tmp_path, monkeypatch):
    """TRL parses the tiny model's own <tool_call> text, runs the env's tool and is paid the env's reward.

    A random model writes no tool call, so the policy first learns the call format from a few supervised steps
    (what a real run does with SFT); everything after that is TRL's loop with the tiny template as it ships.
    """
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOTrainer

    tasks = [{"id": "a", "question": "What is 12+34?", "answer": "46"}]
    env_kwargs = {"tasks": tasks, "tools": [add], "builtin_tools": False, "max_turns": 1}
    cls = as_trl_environment("aligngym/ToolUse-v0", **env_kwargs)
    dataset, _, _ = env_prompt_dataset("aligngym/ToolUse-v0", env_kwargs, 1)
    model, tokenizer = _tiny_policy()
    probe = cls()
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 34}}}
    assert (
        _teach_tool_call(model, tokenizer, dataset["prompt"], [probe.add, probe.submit_answer], call) < 0.05
    )
    ADD_CALLS.clear()
    args = _grpo_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=96,
        max_tool_calling_iterations=1,
        temperature=0.3,
    )
    trainer = GRPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, environment_factory=cls
    )
    assert trainer.chat_template is None
    trainer.train()
    (logged,) = [h for h in trainer.state.log_history if "reward" in h]
    assert ADD_CALLS and set(ADD_CALLS) == {(12, 34)}  # the env's own tool ran, with the parsed arguments
    assert logged["tools/call_frequency"] > 0 and logged["tools/failure_frequency"] == 0
    # ToolUse pays 0.1 * the fraction of well-formed calls (the answer is never given here): only the env's
    # get_reward, after a call it parsed, can make this positive
    assert logged["rewards/ToolUse_v0Environment/mean"] > 0


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
