"""Any aligngym environment as a TRL ``environment_factory`` class.

TRL's ``GRPOTrainer(environment_factory=cls)`` makes one ``cls()`` per rollout, calls ``reset(**row)`` with
the dataset row, exposes the public methods as tools the model calls, and asks ``get_reward()`` at the end.
Tool-using environments (``env.tools``) become one method per tool plus ``submit_answer``; every other
environment becomes one ``respond`` method that sends a message and returns the environment's reply.
"""

from __future__ import annotations

import inspect
import itertools
import json
from typing import Any

from aligngym.envs.registry import make, spec


class _EnvironmentBase:
    """What every generated class shares: the env, reset by the row's seed, and the reward so far."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}

    def __init__(self) -> None:
        self.env = make(self.env_id, **self.env_kwargs).unwrapped
        self._ids = itertools.count()
        self.done = False

    def reset(self, **row: Any) -> str | None:
        """Start the episode of the row's ``seed``; its first message is already the row's prompt."""
        _, info = self.env.reset(seed=row.get("seed"))
        self.done = False
        return None if row.get("prompt") else info["messages"][-1]["content"]

    def get_reward(self) -> float:
        """The episode's reward so far (sum of the environment's rewards)."""
        return float(self.env.episode_reward)

    def _step(self, action: str | dict[str, Any]) -> str:
        if self.done:
            return "The episode is over; no further actions are taken."
        _, _, terminated, truncated, info = self.env.step(action)
        self.done = terminated or truncated
        last = info["messages"][-1]
        return "" if last["role"] == "assistant" else str(last.get("content") or "")


def _respond(self, message: str) -> str:
    """Send your message (your answer) to the environment and get its reply.

    Args:
        message: What you say to the environment, e.g. your answer.
    """
    return self._step(message)


def _submit_answer(self, answer: str) -> str:
    """Give your final answer; this ends the episode.

    Args:
        answer: The final answer to the task.
    """
    return self._step(answer)


# TRL names a tool after its function's __name__.
_respond.__name__ = _respond.__qualname__ = "respond"
_submit_answer.__name__ = _submit_answer.__qualname__ = "submit_answer"


def _tool_method(name: str, fn: Any):
    """A method with ``fn``'s signature and docstring that calls tool ``name`` through the environment."""

    def method(self, **arguments: Any) -> str:
        call = {
            "id": f"call_{next(self._ids)}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        return self._step({"role": "assistant", "content": "", "tool_calls": [call]})

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += list(inspect.signature(fn).parameters.values())
    method.__signature__ = inspect.Signature(params, return_annotation=str)
    method.__annotations__ = {**getattr(fn, "__annotations__", {}), "return": str}
    method.__doc__ = fn.__doc__
    method.__name__ = method.__qualname__ = name
    return method


def as_trl_environment(env_id: str, **env_kwargs: Any) -> type:
    """A class for ``GRPOTrainer(environment_factory=...)`` that plays ``env_id`` (single-agent envs)."""
    if spec(env_id).multi_agent:
        raise ValueError(
            f"{env_id} is multi-agent; train it with `method: grpo` (self-play), not a TRL env class"
        )
    probe = make(env_id, **env_kwargs).unwrapped
    tools = getattr(probe, "tools", None)
    probe.close()
    namespace: dict[str, Any] = {"env_id": env_id, "env_kwargs": dict(env_kwargs)}
    if isinstance(tools, dict) and tools:
        for name, tool in tools.items():
            namespace[name] = _tool_method(name, tool.fn)
        namespace["submit_answer"] = _submit_answer
    else:
        namespace["respond"] = _respond
    class_name = env_id.split("/")[-1].replace("-", "_") + "Environment"
    return type(class_name, (_EnvironmentBase,), namespace)
