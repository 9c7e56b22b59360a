"""Any aligngym environment as a TRL ``environment_factory`` class.

TRL's ``GRPOTrainer(environment_factory=cls)`` makes one ``cls()`` per rollout, calls ``reset(**row)`` with
the dataset row, exposes the public methods as tools the model calls, and asks ``get_reward()`` at the end.
Tool-using environments (``env.tools``) become one method per tool plus ``submit_answer``; every other
environment becomes one ``respond`` method that sends a message and returns the environment's reply. The
episode itself is played by ``run_episode``, as in ``aligngym rollout`` (see ``_EnvironmentBase``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import json
import math
import threading
from typing import Any

from aligngym.agents.base import AgentResponse
from aligngym.envs.registry import make, spec
from aligngym.episode import run_episode
from aligngym.trajectory import Trajectory


class _EnvironmentBase:
    """What every generated class shares: the env, and its episode played by the one driver (``run_episode``).

    TRL runs the turn loop here (it generates and calls our methods), so the episode's agent is a bridge:
    ``run_episode`` runs on a background event loop and each ``act`` waits for TRL's next method call. The
    env, its errors (recorded, never raised into TRL) and its reward are exactly those of ``aligngym rollout``.
    """

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}

    def __init__(self) -> None:
        self.env = make(self.env_id, **self.env_kwargs).unwrapped
        self._ids = itertools.count()
        self._episode: _Bridge | None = None

    @property
    def done(self) -> bool:
        return self._episode is None or self._episode.finished

    def reset(self, **row: Any) -> str | None:
        """Start the episode of the row's ``seed``; its first message is already the row's prompt."""
        if self._episode is not None:
            self._episode.abandon()
        self._episode = _Bridge(self.env, self.env_id, row.get("seed"))
        first = self._episode.start()
        return None if row.get("prompt") else first

    def get_reward(self) -> float:
        """The episode's reward so far (sum of the environment's rewards; NaN for a failed episode)."""
        return 0.0 if self._episode is None else self._episode.reward()

    def _step(self, action: str | dict[str, Any]) -> str:
        if self._episode is None or self._episode.finished:
            return "The episode is over; no further actions are taken."
        return self._episode.send(action)


class _Bridge:
    """One episode: ``run_episode`` on the shared background loop, with this object as its agent."""

    name = "trl"

    def __init__(self, env: Any, env_id: str, seed: int | None):
        self._env, self._env_id, self._seed = env, env_id, seed
        self._asked: concurrent.futures.Future = concurrent.futures.Future()  # the next act's messages
        self._reply: asyncio.Future | None = None  # what TRL's method call answers to that act
        self._run: concurrent.futures.Future | None = None
        self.trajectory: Trajectory | None = None

    @property
    def finished(self) -> bool:
        return self._run is not None and self._run.done()

    async def act(self, messages: list[dict], tools: list[dict[str, Any]] | None = None) -> AgentResponse:
        self._reply = asyncio.get_running_loop().create_future()
        self._asked.set_result(messages)
        action = await self._reply
        if isinstance(action, dict):
            return AgentResponse(
                text=action.get("content") or "", tool_calls=list(action.get("tool_calls", []))
            )
        return AgentResponse(text=action)

    async def aclose(self) -> None:
        """Nothing to release."""

    async def _play(self) -> None:
        (self.trajectory,) = await run_episode(self._env, self, self._seed, env_id=self._env_id)
        if not self._asked.done():
            self._asked.set_result(None)  # the episode ended (or failed) before asking again

    def _next(self) -> list[dict] | None:
        """The messages of the next act, or None when the episode is over."""
        return self._asked.result()

    def start(self) -> str:
        """Run the episode up to its first turn; the first user message (or why the episode failed)."""
        self._run = asyncio.run_coroutine_threadsafe(self._play(), _loop())
        messages = self._next()
        if messages is None:
            return self._last_words()
        return str(messages[-1].get("content") or "")

    def send(self, action: str | dict[str, Any]) -> str:
        """Play ``action`` as the turn; the environment's reply."""
        self._asked = concurrent.futures.Future()
        reply, loop = self._reply, _loop()
        assert reply is not None
        loop.call_soon_threadsafe(reply.set_result, action)
        messages = self._next()
        if messages is None:
            self._run.result()  # surfaces a bug in the bridge itself; env errors are in the trajectory
            return self._last_words()
        last = messages[-1]
        return "" if last["role"] == "assistant" else str(last.get("content") or "")

    def _last_words(self) -> str:
        traj = self.trajectory
        if traj is None:
            return ""
        if traj.error:
            return f"The environment failed: {traj.error}"
        last = traj.messages[-1] if traj.messages else {"role": "assistant"}
        return "" if last["role"] == "assistant" else str(last.get("content") or "")

    def reward(self) -> float:
        if self.trajectory is not None:
            # NaN: TRL counts a sample whose every reward is NaN as unscorable (zero advantage). A 0 could beat
            # an honest attempt's negative reward, and a policy would learn to break the env.
            return math.nan if self.trajectory.error else float(self.trajectory.reward)
        return float(getattr(self._env, "episode_reward", 0.0))

    def abandon(self) -> None:
        """Stop an episode TRL left unfinished (the env's next reset ends it properly)."""
        if self._run is not None and not self._run.done():
            self._run.cancel()


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The background event loop every adapter's episodes run on (one thread for the process)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="aligngym-trl-env", daemon=True).start()
        return _LOOP


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
    """A class for ``GRPOTrainer(environment_factory=...)`` that plays ``env_id`` (single-agent envs).

    Train on ``env_prompt_dataset(env_id, env_kwargs, n)`` (its ``seed`` column picks each episode). The
    tokenizer's chat template must render tools and TRL must parse its replies: the tiny policy's does both.
    """
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
