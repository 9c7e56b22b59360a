"""The conformance check every environment passes, built-in or from a package: ``check_conformance(env_id)``.

Single-agent ids: Gymnasium's ``check_env``; the chat contract (``str`` observations, ``info["messages"]``, a
finite reward and ``info["reward_components"]``); same seed, same episode (the same env reused, and a fresh
one) under fixed scripted replies; text spaces and a step that take any Unicode; ``close`` twice. Multi-agent
ids: PettingZoo's ``parallel_api_test`` and the same properties per seat, plus one chat per seat. A failure is
an ``AssertionError`` whose message starts with the id and the property that failed.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

from aligngym.envs.registry import UnknownEnvError, make, spec

#: Replies every env gets, in order, for the same-seed comparison: a number, code, prose, nothing.
SCRIPTED_REPLIES = ("42", "```python\ndef f(x):\n    return x\n```", "I do not know.", "")
#: The multi-agent envs' replies (seat ``i`` of round ``t`` says ``MULTI_AGENT_REPLIES[(t + i) % 3]``).
MULTI_AGENT_REPLIES = ("I think the answer is 7. <quote>It</quote> agent_0: 5 - fine", "(B) 12", "[leave]")
UNICODE = "Hello, world! ¿Qué tal? 你好 — naïve café ✓ 🙂\n\tend"
#: Rounds of a multi-agent episode compared at most (an episode may be longer; its start must still repeat).
MAX_ROUNDS = 50


class _Failed(AssertionError):
    """A property failed; its message already names the id and the property."""


@contextlib.contextmanager
def _property(env_id: str, name: str) -> Iterator[None]:
    """Turn any failure inside into an ``AssertionError`` naming ``env_id`` and the property ``name``."""
    try:
        yield
    except _Failed:
        raise
    except AssertionError as exc:
        raise _Failed(f"{env_id}: {name}: {exc}") from exc
    except Exception as exc:
        raise _Failed(f"{env_id}: {name}: {type(exc).__name__}: {exc}") from exc


def check_conformance(env_id: str, env_kwargs: dict[str, Any] | None = None, *, seed: int = 7) -> None:
    """Raise ``AssertionError`` (naming the property) unless ``env_id`` built with ``env_kwargs`` conforms."""
    kwargs = dict(env_kwargs or {})
    try:
        entry = spec(env_id)
    except UnknownEnvError as exc:
        raise AssertionError(f"{env_id}: registered: {exc}") from None
    opened: list[Any] = []

    def build() -> Any:
        with _property(env_id, "builds with " + (repr(kwargs) if kwargs else "its defaults")):
            env = make(env_id, **kwargs)
        opened.append(env)
        return env

    try:
        (_check_multi_agent if entry.multi_agent else _check_single_agent)(env_id, build, seed)
    finally:
        for env in opened:  # a failed check still frees what the envs hold (sandboxes, servers)
            with contextlib.suppress(Exception):
                env.close()


def _check_single_agent(env_id: str, build: Any, seed: int) -> None:
    from gymnasium.utils.env_checker import check_env

    env = build()
    with _property(env_id, "gymnasium's check_env"):
        check_env(env.unwrapped, skip_render_check=True)
    with _property(env_id, "chat contract"):
        first = _episode(env, seed)
    with _property(env_id, f"same seed ({seed}), same episode"):
        _same(first, _episode(env, seed), "the same env reset again")
        _same(first, _episode(build(), seed), "a fresh env")
    with _property(env_id, "Unicode text"):
        for name, space in (("observation", env.observation_space), ("action", env.action_space)):
            assert space.contains(UNICODE), f"the {name} space rejects Unicode text"
            assert not space.contains(b"bytes"), f"the {name} space accepts bytes"
        env.reset(seed=seed)
        observation, reward, *_ = env.step(UNICODE)
        assert isinstance(observation, str), (
            f"a Unicode reply gives a {type(observation).__name__} observation"
        )
        _finite(reward, "the reward of a Unicode reply")
    with _property(env_id, "close twice"):
        env.close()
        env.close()


def _episode(env: Any, seed: int) -> list[tuple]:
    """What one seeded episode under ``SCRIPTED_REPLIES`` shows, checking the chat contract on the way."""
    observation, info = env.reset(seed=seed)
    assert isinstance(observation, str), f"reset gives a {type(observation).__name__} observation, not str"
    assert env.observation_space.contains(observation), "reset's observation is outside the observation space"
    trace: list[tuple] = [(observation, _messages(info))]
    for reply in SCRIPTED_REPLIES:
        observation, reward, terminated, truncated, info = env.step(reply)
        assert isinstance(observation, str), f"step gives a {type(observation).__name__} observation, not str"
        _finite(reward, "the reward")
        assert isinstance(terminated, bool) and isinstance(truncated, bool), "terminated/truncated not bool"
        trace.append((observation, reward, terminated, truncated, _components(info), _messages(info)))
        if terminated or truncated:
            break
    return trace


def _messages(info: Any) -> list[dict[str, Any]]:
    messages = info.get("messages") if isinstance(info, dict) else None
    assert isinstance(messages, list), "info['messages'] (the chat so far) is missing or not a list"
    for message in messages:
        assert isinstance(message, dict) and isinstance(message.get("role"), str), f"bad message {message!r}"
        assert isinstance(message.get("content"), str), f"a message's content is not str: {message!r}"
    return messages


def _components(info: Any) -> dict[str, float]:
    components = info.get("reward_components")
    assert isinstance(components, dict), "info['reward_components'] is missing or not a dict"
    for name, value in components.items():
        assert isinstance(name, str), f"reward component name {name!r} is not str"
        _finite(value, f"reward component {name!r}")
    return components


def _finite(value: Any, what: str) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    assert ok, f"{what} is {value!r}, not a finite number"


def _same(first: list, again: list, how: str) -> None:
    """Assert two traces are equal, naming the first step where they differ."""
    for step, (a, b) in enumerate(zip(first, again, strict=False)):
        assert a == b, f"{how} differs at step {step}: {_short(a)} != {_short(b)}"
    assert len(first) == len(again), f"{how} has {len(again)} steps, not {len(first)}"


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_multi_agent(env_id: str, build: Any, seed: int) -> None:
    from pettingzoo.test import parallel_api_test

    env = build()
    with _property(env_id, "PettingZoo's parallel_api_test"):
        parallel_api_test(env, num_cycles=MAX_ROUNDS)
    with _property(env_id, "chat contract"):
        first = _rounds(env, seed)
    with _property(env_id, f"same seed ({seed}), same episode"):
        _same(first, _rounds(env, seed), "the same env reset again")
        _same(first, _rounds(build(), seed), "a fresh env")
    with _property(env_id, "one chat per seat"):
        _, infos = env.reset(seed=seed)
        assert set(infos) == set(env.possible_agents), "reset's infos do not have one entry per seat"
        actions = {a: f"{UNICODE} from {a}" for a in env.agents}
        _, rewards, *_, infos = env.step(actions)
        for agent, action in actions.items():
            own = {"role": "assistant", "content": action}
            assert own in _messages(infos[agent]), f"{agent}'s chat does not hold its own reply as assistant"
            _finite(rewards[agent], f"{agent}'s reward")
    with _property(env_id, "Unicode text"):
        for agent in env.possible_agents:
            for name, space in (("observation", env.observation_space), ("action", env.action_space)):
                assert space(agent).contains(UNICODE), f"{agent}'s {name} space rejects Unicode text"
                assert not space(agent).contains(b"bytes"), f"{agent}'s {name} space accepts bytes"
    with _property(env_id, "close twice"):
        env.close()
        env.close()


def _rounds(env: Any, seed: int) -> list[Any]:
    """What one seeded multi-agent episode (up to ``MAX_ROUNDS``) shows under ``MULTI_AGENT_REPLIES``."""
    observations, infos = env.reset(seed=seed)
    trace: list[Any] = [(observations, {a: _messages(i) for a, i in infos.items()})]
    for turn in range(MAX_ROUNDS):
        if not env.agents:
            break
        n = len(MULTI_AGENT_REPLIES)
        actions = {a: MULTI_AGENT_REPLIES[(turn + i) % n] for i, a in enumerate(env.agents)}
        observations, rewards, terminations, truncations, infos = env.step(actions)
        for agent, reward in rewards.items():
            _finite(reward, f"{agent}'s reward")
        components = {a: _components(i) for a, i in infos.items()}
        trace.append((observations, rewards, terminations, truncations, components))
    return trace
