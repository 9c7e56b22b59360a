"""Base class for text environments: observations and actions are strings, the chat is in ``info``."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import itertools
import string
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

Message = dict[str, Any]
T = TypeVar("T")

# Gymnasium's default Text charset is alphanumeric only, so prose fails ``contains``; we accept any
# string and sample from printable ASCII (sampling is only used by checkers and random agents).
_SAMPLE_CHARSET = string.printable


_SHARED_TABLES: dict[str, tuple] = {}


class TextSpace(gym.spaces.Text):
    """A ``Text`` space that contains any ``str`` up to ``max_length`` characters (any Unicode)."""

    def __init__(self, max_length: int = 1_000_000, min_length: int = 0, seed: int | None = None):
        super().__init__(max_length=max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)
        # Every env has two of these: share the charset tables instead of building them per instance.
        shared = _SHARED_TABLES.setdefault(
            "tables", (self._char_set, self._char_list, self._char_index, self._char_str)
        )
        self._char_set, self._char_list, self._char_index, self._char_str = shared

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        # Short samples keep env checkers fast; long random text adds nothing to a check.
        length = int(self.np_random.integers(self.min_length, min(self.max_length, 64) + 1))
        chars = self.np_random.choice(list(_SAMPLE_CHARSET), size=length)
        return "".join(chars)

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"


@dataclass
class StepResult:
    """What one turn of a text environment produced (the return value of ``TextEnv.turn``)."""

    observation: str = ""
    reward: float = 0.0
    terminated: bool = False
    components: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: Messages the environment adds to the chat (e.g. ``tool`` results); None means one ``user`` message
    #: holding ``observation`` (the common case).
    messages: list[Message] | None = None


class TextEnv(gym.Env[str, str], abc.ABC):
    """A chat-shaped environment: ``reset`` gives the first user message, ``step`` takes the assistant's reply.

    Subclasses implement three hooks, each in its sync or its async form: ``new_episode``/``anew_episode``
    (pick a task from ``self.np_random``, return the first message), ``turn``/``aturn`` (score one assistant
    message) and, when an episode holds something, ``end_episode``/``aend_episode``. Environments that wait
    (sandboxes, servers, models) write the async form, so nothing they do blocks the event loop. This class
    owns the message history, turn limit, truncation, reward components and the ``info`` layout in one
    async core (``areset``, ``astep``); ``reset`` and ``step`` are thin sync wrappers around it.
    """

    metadata = {"render_modes": ["ansi"]}
    #: Human-readable one-liner shown by ``aligngym envs``.
    description: str = ""
    #: The reward component that is >= 1 exactly when an episode achieved its task (``aligngym eval``'s pass@k,
    #: greedy accuracy and ``Trajectory.success`` read it); ``None``: the env has no notion of success.
    success_component: str | None = None
    #: OpenAI-format tool schemas the rollout sends with each request (tool-using environments set it).
    tool_schemas: list[dict[str, Any]] | None = None
    #: Whether ``turn`` receives assistant messages as dicts (with ``tool_calls``) instead of their text.
    accepts_messages: bool = False
    #: Which hooks are written async (set per class). The core calls a sync hook directly (no coroutine per
    #: step), and when none is async the sync wrappers need no event loop.
    _async_hooks: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._async_hooks = frozenset(a for s, a in _HOOKS if _written(cls, s, a) == a)

    def __init__(self, max_turns: int = 1, system_prompt: str | None = None, render_mode: str | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        for sync, async_ in _HOOKS[:2]:  # an episode may hold nothing: end_episode is optional
            if _written(type(self), sync, async_) is None:
                raise TypeError(f"{type(self).__name__} must implement {sync} or {async_}")
        self.max_turns = max_turns
        self.system_prompt = system_prompt
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.messages: list[Message] = []
        #: ``info["messages"]``'s copies of ``self.messages``' entries, made once each (see ``_chat_so_far``).
        self._shown: list[Message] = []
        self._shown_of: list[Message] | None = None
        self.turns = 0
        self.episode_reward = 0.0
        self._done = False
        #: An episode was started (reset) and has not ended yet: the next reset ends it first.
        self._episode_open = False

    # -- to implement: each hook in its sync or its async form ------------------------------------------
    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        """Choose this episode's task (using ``self.np_random``) and return the first user message and info."""
        return run_sync(self.anew_episode(options))  # the sync form of an env that writes the async one

    async def anew_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        """Async ``new_episode``, for environments that wait to set an episode up (e.g. for a sandbox)."""
        return self.new_episode(options)

    def turn(self, action: str) -> StepResult:
        """Score one assistant message; return the next observation, reward and whether the task is done."""
        return run_sync(self.aturn(action))  # the sync form of an env that writes the async one

    async def aturn(self, action: str) -> StepResult:
        """Async ``turn``; environments that block (sandboxes, servers) write this one."""
        return self.turn(action)

    def end_episode(self) -> None:
        """Free what only a running episode needs (e.g. give a pooled sandbox back); called once it ends."""

    async def aend_episode(self) -> None:
        """Async ``end_episode`` (giving a sandbox back resets it: environments holding one write this)."""
        self.end_episode()

    def close(self) -> None:
        if self._episode_open:
            self._end_now()  # an episode cut short still gives back what it held
        super().close()

    async def aclose(self) -> None:
        """``close`` for async code: an open episode is ended without blocking the event loop."""
        if self._episode_open:
            await self._aend()
        self.close()

    # -- gymnasium API: the sync forms -----------------------------------------------------------------
    # With an async hook they run the async core on a loop (run_sync). An env whose hooks are all sync takes
    # the same steps here directly, with no coroutine per step: both forms share every step but the awaits.
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        if self._async_hooks:
            return run_sync(self.areset(seed=seed, options=options))
        if self._episode_open:
            self._episode_open = False
            self.end_episode()
        self._begin(seed)
        return self._first(*self.new_episode(options))

    def step(self, action: str | Message) -> tuple[str, float, bool, bool, dict]:
        if self._async_hooks:
            return run_sync(self.astep(action))
        out = self._after_turn(self.turn(self._before_turn(action)))
        if self._done:  # an env parked between episodes must not hold a sandbox others wait for
            self.end_episode()
        return out

    def _end_now(self) -> None:
        if self._async_hooks:
            run_sync(self._aend())
        else:
            self._episode_open = False
            self.end_episode()

    # -- the async core ---------------------------------------------------------------------------------
    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict]:
        """Start an episode; one abandoned mid-way is ended first (its sandbox given back and reset)."""
        # Nothing the abandoned episode planted (files, processes) may reach the next one.
        if self._episode_open:
            await self._aend()
        self._begin(seed)
        if "anew_episode" in self._async_hooks:
            return self._first(*await self.anew_episode(options))
        return self._first(*self.new_episode(options))

    async def astep(self, action: str | Message) -> tuple[str, float, bool, bool, dict]:
        """Play one assistant turn: the rollout loop awaits it, so a waiting env does not stall others."""
        turn = self._before_turn(action)
        out = self._after_turn(await self.aturn(turn) if "aturn" in self._async_hooks else self.turn(turn))
        if self._done:  # an env parked between episodes must not hold a sandbox others wait for
            await self._aend()
        return out

    async def _aend(self) -> None:
        self._episode_open = False
        if "aend_episode" in self._async_hooks:
            await self.aend_episode()
        else:
            self.end_episode()

    # -- the steps both forms share ---------------------------------------------------------------------
    def _begin(self, seed: int | None) -> None:
        super().reset(seed=seed)
        self._episode_open = True  # before new_episode: what a failing one took is given back next time
        self.turns = 0
        self.episode_reward = 0.0
        self._done = False

    def _first(self, observation: str, info: dict[str, Any]) -> tuple[str, dict]:
        self.messages = []
        if self.system_prompt:
            self.messages.append({"role": "system", "content": self.system_prompt})
        self.messages.append({"role": "user", "content": observation})
        return observation, self._info(info, {})

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return "\n".join(f"[{m['role']}] {m['content']}" for m in self.messages)
        return None

    # -- shared turn loop ---------------------------------------------------------------------------
    def _before_turn(self, action: str | Message) -> Any:
        """Record the assistant turn; returns what ``turn`` receives (the text, or the message for tool envs)."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if isinstance(action, dict):
            # An OpenAI-style assistant message, e.g. with native ``tool_calls`` from the server.
            message = {**action, "role": "assistant", "content": action.get("content") or ""}
        elif isinstance(action, str):
            message = {"role": "assistant", "content": action}
        else:
            raise TypeError(f"action must be a str (the assistant message), got {type(action).__name__}")
        self.turns += 1
        self.messages.append(message)
        return message if self.accepts_messages else message["content"]

    def _after_turn(self, result: StepResult) -> tuple[str, float, bool, bool, dict]:
        """Record the turn's result; ``_done`` tells the caller to end the episode (its sync or async way)."""
        # A single-turn task ends with its one answer: that is a terminal state, not a cut-off (and
        # gymnasium's checker rightly rejects truncation after one step). Multi-turn episodes that run out
        # of turns are truncated.
        terminated = bool(result.terminated) or self.max_turns == 1
        truncated = not terminated and self.turns >= self.max_turns
        self._done = terminated or truncated
        if self._done:
            self._episode_open = False  # it ends now: the next reset has nothing left to end
        if result.messages is not None:
            self.messages.extend(dict(m) for m in result.messages)
        elif not self._done:
            self.messages.append({"role": "user", "content": result.observation})
        reward = float(result.reward)
        self.episode_reward += reward
        return result.observation, reward, terminated, truncated, self._info(result.info, result.components)

    def _info(self, extra: dict[str, Any], components: dict[str, float]) -> dict[str, Any]:
        info = dict(extra)
        info["messages"] = self._chat_so_far()
        info["reward_components"] = {k: float(v) for k, v in components.items()}
        info["turn"] = self.turns
        return info

    def _chat_so_far(self) -> list[Message]:
        """``info["messages"]``: a new list each step, of copies of ``self.messages``' entries made once each.

        Copying every message at every step made a turn cost more the longer the chat; now a turn copies only
        the messages it added (and the list's pointers). The copies keep ``self.messages``, which the env
        scores from, out of reach of code that edits what it was handed; they are shared by the steps of an
        episode, so an edit to one shows in later steps' ``info`` (copy a message before editing it).
        """
        shown, chat = self._shown, self.messages
        if self._shown_of is not chat or len(shown) > len(chat):  # a new episode (or a subclass's new list)
            shown = self._shown = []
            self._shown_of = chat
        if len(shown) < len(chat):
            shown.extend(dict(m) for m in itertools.islice(chat, len(shown), None))
        return shown.copy()


def rng_choice_index(rng: np.random.Generator, n: int) -> int:
    """A seeded index in ``range(n)``; environments pick tasks with it so same seed gives same task."""
    return int(rng.integers(0, n))


#: Each hook's (sync, async) forms; an env writes one of them.
_HOOKS = (("new_episode", "anew_episode"), ("turn", "aturn"), ("end_episode", "aend_episode"))


def _written(cls: type, sync: str, async_: str) -> str | None:
    """Which form of a hook ``cls`` uses: the one written lowest in its MRO (a subclass's sync ``turn``
    overrides an ancestor's ``aturn``), or None when only ``TextEnv``'s defaults are there."""
    for klass in cls.__mro__:
        if klass is TextEnv:
            return None
        if async_ in vars(klass):
            return async_
        if sync in vars(klass):
            return sync
    return None


def finish_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only other such coroutines) to its end, loop-free."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a sync environment hook awaited something: write the hook's async form instead")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A sync step() called from inside a running loop cannot block that loop's thread on itself.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
