"""Base class for multi-agent text environments, on PettingZoo's Parallel API.

Every agent sees its own chat (``infos[agent]["messages"]``) and gets its own reward and reward components,
so self-play training has per-agent trajectories. Subclasses implement ``new_episode`` and ``play_round``;
this class owns seeding, the per-agent chats, round limits and the termination bookkeeping.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from .base import Message, TextSpace, finish_now, run_sync


@dataclass
class RoundResult:
    """What one simultaneous round produced, per agent, and whether the episode is over."""

    observations: dict[str, str] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)
    done: bool = False
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Episode-level facts (e.g. whether the majority was right), copied into every agent's info.
    episode_info: dict[str, Any] = field(default_factory=dict)


class MultiAgentTextEnv(ParallelEnv, abc.ABC):
    """A PettingZoo ``ParallelEnv`` whose observations and actions are text, one chat per agent."""

    metadata = {"name": "aligngym_multi_agent", "render_modes": ["ansi"], "is_parallelizable": True}
    #: Human-readable one-liner shown by ``aligngym envs``.
    description: str = ""
    #: The reward component that is >= 1 exactly when an episode achieved its task (``aligngym eval``'s pass@k,
    #: greedy accuracy and ``Trajectory.success`` read it); ``None``: the env has no notion of success.
    success_component: str | None = None

    def __init__(self, agent_ids: list[str], max_rounds: int, render_mode: str | None = None):
        if len(set(agent_ids)) != len(agent_ids) or not agent_ids:
            raise ValueError(f"agent ids must be unique and non-empty, got {agent_ids}")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.possible_agents = list(agent_ids)
        # PettingZoo requires the same space object for an agent on every call.
        self._observation_spaces = {a: TextSpace() for a in agent_ids}
        self._action_spaces = {a: TextSpace() for a in agent_ids}
        self.agents: list[str] = []
        self.max_rounds = max_rounds
        self.render_mode = render_mode
        self.rounds = 0
        self.messages: dict[str, list[Message]] = {}
        self.np_random, _ = seeding.np_random(None)
        self._episode_info: dict[str, Any] = {}

    # -- to implement -------------------------------------------------------------------------------
    @abc.abstractmethod
    def new_episode(self, options: dict[str, Any] | None) -> dict[str, str]:
        """Choose this episode's task with ``self.np_random``; return each agent's first message."""

    async def anew_episode(self, options: dict[str, Any] | None) -> dict[str, str]:
        """Async ``new_episode``, for environments that wait to set an episode up."""
        return self.new_episode(options)

    @abc.abstractmethod
    async def play_round(self, actions: dict[str, str]) -> RoundResult:
        """Apply every agent's message for this round; return what each agent sees and earns next."""

    # -- PettingZoo API -----------------------------------------------------------------------------
    def observation_space(self, agent: str) -> TextSpace:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> TextSpace:
        return self._action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        # The async core, finished here without an event loop unless the env sets episodes up async.
        coro = self.areset(seed=seed, options=options)
        return (
            run_sync(coro)
            if type(self).anew_episode is not MultiAgentTextEnv.anew_episode
            else finish_now(coro)
        )

    async def areset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode: each agent's first message and info."""
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
            for i, agent in enumerate(self.possible_agents):
                self.action_space(agent).seed(seed + i)
        self.agents = list(self.possible_agents)
        self.rounds = 0
        self._episode_info = {}
        first = await self.anew_episode(options)
        self.messages = {a: [{"role": "user", "content": first[a]}] for a in self.agents}
        return dict(first), {a: self._info(a, {}, {}) for a in self.agents}

    def step(self, actions: dict[str, str]):
        return run_sync(self.astep(actions))

    async def astep(self, actions: dict[str, str]):
        """Async ``step``: environments whose rounds call models (judges, evaluators) await them here."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        # A live agent that sent nothing said nothing: an empty message, never a crash.
        actions = {a: actions.get(a, "") for a in self.agents}
        for agent, text in actions.items():
            if not isinstance(text, str):
                raise TypeError(f"action of {agent} must be a str, got {type(text).__name__}")
            self.messages[agent].append({"role": "assistant", "content": text})
        result = await self.play_round(actions)
        self.rounds += 1
        self._episode_info.update(result.episode_info)
        terminated = bool(result.done)
        truncated = not terminated and self.rounds >= self.max_rounds
        live = list(self.agents)
        observations, infos = {}, {}
        for agent in live:
            observations[agent] = result.observations.get(agent, "")
            if not (terminated or truncated):
                self.messages[agent].append({"role": "user", "content": observations[agent]})
            infos[agent] = self._info(agent, result.infos.get(agent, {}), result.components.get(agent, {}))
        rewards = {a: float(result.rewards.get(a, 0.0)) for a in live}
        if terminated or truncated:
            self.agents = []
        return (
            observations,
            rewards,
            dict.fromkeys(live, terminated),
            dict.fromkeys(live, truncated),
            infos,
        )

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n\n".join(
            f"== {agent} ==\n" + "\n".join(f"[{m['role']}] {m['content']}" for m in msgs)
            for agent, msgs in self.messages.items()
        )

    def close(self) -> None:
        """Release resources; the base holds none."""

    def _info(self, agent: str, extra: dict[str, Any], components: dict[str, float]) -> dict[str, Any]:
        info = dict(extra)
        info["messages"] = [dict(m) for m in self.messages.get(agent, [])]
        info["reward_components"] = {k: float(v) for k, v in components.items()}
        info["round"] = self.rounds
        info["episode"] = dict(self._episode_info)
        return info
