"""The episode engine: one async driver for every path that plays an episode.

``aligngym rollout``, Ray workers, GRPO/RLOO's ``rollout_func``, ``iterate`` and the TRL environment adapter
all call ``run_episode``, so what ``rollout`` evaluates is exactly what training trains on. An exception in
the env or the policy never escapes: it becomes the trajectory's ``error`` (a failed episode is recorded,
never dropped), and ``EnvPool`` replaces the env it happened in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aligngym.agents.base import Agent, AgentResponse, Message
from aligngym.agents.seeding import derive_seed, request_seed, seeded
from aligngym.envs.packages import distribution_of
from aligngym.envs.registry import make, registered

from .trajectory import Trajectory

#: Hard stop for environments whose episodes never end, so one bad env cannot hang a run.
MAX_TURNS_GUARD = 1000


async def run_episode(
    env: Any,
    policy: Agent | Mapping[str, Agent],
    seed: int | None = None,
    *,
    env_id: str | None = None,
    episode: int = 0,
    on_turn: Callable[[], None] | None = None,
    sampling_seed: int | None = None,
) -> list[Trajectory]:
    """Play one episode of ``env`` (single- or multi-agent); one trajectory per seat, linked by ``episode_id``.

    ``policy`` is one agent, or for multi-agent envs one agent for every seat (self-play) or a ``{seat:
    agent}`` map. ``on_turn`` is called after every turn (progress lines count turns with it). With a
    ``sampling_seed`` every request of the episode carries its own seed (``agents.seeding``), derived from it,
    the seat and the turn.
    """
    env = getattr(env, "unwrapped", env)  # gymnasium wrappers hide ``astep``
    env_id = env_id or getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    ask = _Asker(sampling_seed)
    if hasattr(env, "possible_agents"):
        trajs = await _multi_agent(env, seat_agents(env, policy), env_id, episode, seed, on_turn, ask)
    elif isinstance(policy, Mapping):
        raise ValueError(f"{env_id} is single-agent: pass one agent, not a seat map")
    else:
        trajs = [await _single_agent(env, policy, env_id, episode, seed, on_turn, ask)]
    origin = provenance(env, env_id)
    for traj in trajs:
        traj.env_package, traj.env_package_version, traj.aligngym_version = origin
    return trajs


def provenance(env: Any, env_id: str = "") -> tuple[str, str, str]:
    """``(package, its version, aligngym's version)`` for ``env``'s rows: the distribution its class comes
    from (so a built-in id that ran anything but aligngym's class shows it), else the package that declared
    ``env_id``; ``""`` when neither is known."""
    from aligngym import __version__

    module = type(getattr(env, "unwrapped", env)).__module__
    if module == "aligngym" or module.startswith("aligngym."):
        return "aligngym", __version__, __version__
    package, version = distribution_of(module)
    entry = None if package else registered().get(env_id)
    if entry is not None and entry.package:
        package, version = entry.package, entry.package_version
    return package, version, __version__


class _Asker:
    """Calls ``agent.act``, with the request's sampling seed in context when the episode has one."""

    def __init__(self, sampling_seed: int | None):
        self.sampling_seed = sampling_seed

    async def __call__(
        self, agent: Agent, messages: list[Message], tools: Any = None, seat: str = "", turn: int = 0
    ) -> AgentResponse:
        if self.sampling_seed is None and request_seed() is None:  # no seed to set or to hide (most runs)
            return await _act(agent, messages, tools)
        seed = None if self.sampling_seed is None else derive_seed(self.sampling_seed, seat, turn)
        with seeded(seed):
            return await _act(agent, messages, tools)


def _act(agent: Agent, messages: list[Message], tools: Any) -> Any:
    """``agent.act``'s awaitable; ``tools`` only when there are some (agents without tool support work)."""
    return agent.act(messages, tools=tools) if tools else agent.act(messages)


async def _single_agent(
    env: Any,
    agent: Agent,
    env_id: str,
    episode: int,
    seed: int | None,
    on_turn: Callable[[], None] | None,
    ask: _Asker,
) -> Trajectory:
    traj = Trajectory(
        env_id=env_id, episode=episode, seed=seed, agent=agent.name, episode_id=uuid.uuid4().hex
    )
    start = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        _, info = await _reset(env, seed)
        traj.messages = info.get("messages", [])
        tools = getattr(env, "tool_schemas", None)
        while traj.turns < MAX_TURNS_GUARD:
            response = await ask(agent, traj.messages, tools, turn=traj.turns)
            traj.add_turn_tokens(response)  # the exact ids sampled, when the backend gives them
            _, reward, terminated, truncated, info = await _step(env, _action(response))
            traj.turns += 1
            if on_turn:
                on_turn()
            traj.rewards.append(float(reward))
            traj.messages = info.get("messages", traj.messages)
            if terminated or truncated:
                traj.terminated, traj.truncated = bool(terminated), bool(truncated)
                break
        else:
            raise RuntimeError(
                f"episode did not end within {MAX_TURNS_GUARD} turns; set max_turns on the env"
            )
    except Exception as exc:
        traj.error = _describe(exc)
    _finish(traj, info, time.perf_counter() - start, getattr(env, "success_component", None))
    return traj


async def _multi_agent(
    env: Any,
    seats: dict[str, Agent],
    env_id: str,
    episode: int,
    seed: int | None,
    on_turn: Callable[[], None] | None,
    ask: _Asker,
) -> list[Trajectory]:
    episode_id = uuid.uuid4().hex
    start = time.perf_counter()
    trajs = {
        seat: Trajectory(
            env_id=env_id,
            episode=episode,
            seed=seed,
            agent=agent.name,
            episode_id=episode_id,
            agent_id=seat,
            num_agents=len(seats),
        )
        for seat, agent in seats.items()
    }
    infos: dict[str, dict[str, Any]] = {}
    error = None
    try:
        _, infos = await _reset(env, seed)
        for seat, traj in trajs.items():
            traj.messages = infos[seat]["messages"]
        rounds = 0
        while env.agents:
            if rounds >= MAX_TURNS_GUARD:
                raise RuntimeError(f"episode did not end within {MAX_TURNS_GUARD} rounds")
            live = list(env.agents)
            replies = await asyncio.gather(
                *(ask(seats[a], trajs[a].messages, seat=a, turn=trajs[a].turns) for a in live)
            )
            actions = {a: r.text for a, r in zip(live, replies, strict=True)}
            _, rewards, terminations, truncations, step_infos = await _step(env, actions)
            rounds += 1
            if on_turn:
                on_turn()
            for a, reply in zip(live, replies, strict=True):
                traj = trajs[a]
                traj.add_turn_tokens(reply)
                traj.turns += 1
                traj.rewards.append(float(rewards.get(a, 0.0)))
                infos[a] = step_infos.get(a, infos.get(a, {}))
                traj.messages = infos[a].get("messages", traj.messages)
                traj.terminated = bool(terminations.get(a, False))
                traj.truncated = bool(truncations.get(a, False))
    except Exception as exc:
        error = _describe(exc)
    duration = time.perf_counter() - start
    for seat, traj in trajs.items():
        traj.error = error
        _finish(traj, infos.get(seat, {}), duration, getattr(env, "success_component", None))
    return list(trajs.values())


async def _reset(env: Any, seed: int | None) -> tuple[Any, Any]:
    # Our envs have an async core; a plain gymnasium/PettingZoo env only has the sync API.
    areset = getattr(env, "areset", None)
    return await areset(seed=seed) if areset else env.reset(seed=seed)


async def _step(env: Any, action: Any) -> tuple:
    astep = getattr(env, "astep", None)
    return await astep(action) if astep else env.step(action)


def _action(response: AgentResponse) -> str | dict[str, Any]:
    """What the env receives: the text, or the whole assistant message when the model made native tool calls."""
    if getattr(response, "tool_calls", None):
        return {"role": "assistant", "content": response.text, "tool_calls": response.tool_calls}
    return response.text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _finish(traj: Trajectory, info: dict[str, Any], duration: float, success_component: str | None) -> None:
    traj.reward = float(sum(traj.rewards))
    traj.reward_components = dict(info.get("reward_components", {}))
    if success_component is not None and traj.error is None:
        traj.success = traj.reward_components.get(success_component, 0.0) >= 1.0
    traj.info = {k: v for k, v in info.items() if k not in ("messages", "reward_components")}
    traj.duration_s = duration


def seat_agents(env: Any, agent: Agent | Mapping[str, Agent]) -> dict[str, Agent]:
    """Map every seat of a multi-agent env to a policy: one policy for all (self-play) or one per seat."""
    seats = list(env.possible_agents)
    if not isinstance(agent, Mapping):
        return dict.fromkeys(seats, agent)
    missing = [s for s in seats if s not in agent]
    unknown = [s for s in agent if s not in seats]
    if missing or unknown:
        raise ValueError(f"seat map must name each of {seats}; missing {missing}, unknown {unknown}")
    return dict(agent)


class EnvPool:
    """Envs of one id for the episodes in flight: reused after a clean episode, replaced after a failed one.

    After a failure an env may be mid-episode in an unknown state; a fresh one is cheap insurance.
    """

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, spare: Any = None):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self._free: list[Any] = [] if spare is None else [getattr(spare, "unwrapped", spare)]

    def take(self) -> Any:
        """An env ready for ``reset``: a spare one, or a new one."""
        if self._free:
            return self._free.pop()
        env = make(self.env_id, **self.env_kwargs)
        return getattr(env, "unwrapped", env)

    async def give_back(self, env: Any, ok: bool) -> None:
        """Keep ``env`` for the next episode if its episode ``ok``-ly finished, else close it (off the loop)."""
        if ok:
            self._free.append(env)
            return
        with contextlib.suppress(Exception):
            aclose = getattr(env, "aclose", None)
            await aclose() if aclose else env.close()

    def close(self) -> None:
        """Close the spare envs."""
        while self._free:
            _close(self._free.pop())

    async def play(
        self,
        policy: Agent | Mapping[str, Agent],
        episode: int,
        seed: int | None,
        on_turn: Callable[[], None] | None = None,
        sampling_seed: int | None = None,
    ) -> list[Trajectory]:
        """``run_episode`` on an env of the pool, which goes back to the pool unless the episode failed."""
        env = self.take()
        group: list[Trajectory] = []
        try:
            group = await run_episode(
                env,
                policy,
                seed,
                env_id=self.env_id,
                episode=episode,
                on_turn=on_turn,
                sampling_seed=sampling_seed,
            )
        finally:
            await self.give_back(env, bool(group) and not group[0].error)
        return group


def _close(env: Any) -> None:
    with contextlib.suppress(Exception):
        env.close()
