"""Prompt datasets from environments: the rows GRPO and TRL's ``environment_factory`` start their episodes from."""

from __future__ import annotations

from typing import Any


def env_prompt_dataset(env_id: str, env_kwargs: dict[str, Any], num_prompts: int):
    """First messages of episodes with seeds 0..N-1 (one per seat for multi-agent envs) as a ``datasets.Dataset``.

    Columns: ``prompt`` (the episode's first chat messages, system and user, as ``{"role", "content"}``
    dicts), ``seed`` (the ``reset`` seed that reproduces the episode) and ``seat`` (the agent's seat in a
    multi-agent env, ``""`` otherwise). A prompt identical to an earlier seed's is left out (the same task for
    the learner). ``as_trl_environment``'s ``reset(**row)`` replays the episode of ``seed`` and, as ``prompt``
    already holds its first message, adds no observation; without a ``prompt`` it returns that message.

    Returns the dataset, each prompt's ``(seed, seat)`` by ``prompt_key`` and the names of the env's reward
    components.
    """
    from datasets import Dataset

    from aligngym.envs.registry import make

    from .env_rollout import prompt_key  # with torch: imported on use, like datasets

    env = make(env_id, **env_kwargs)
    env = getattr(env, "unwrapped", env)
    multi = hasattr(env, "possible_agents")
    rows, tasks = [], {}
    for seed in range(num_prompts):
        _, infos = env.reset(seed=seed)
        for seat in env.possible_agents if multi else [None]:
            prompt = (infos[seat] if multi else infos)["messages"]
            # Identical prompts are the same task for the learner; the first (seed, seat) stands for all.
            if tasks.setdefault(prompt_key(prompt), (seed, seat)) == (seed, seat):
                rows.append({"prompt": prompt, "seed": seed, "seat": seat or ""})
    components = _component_names(env)
    env.close()
    return Dataset.from_list(rows), tasks, components


def _component_names(env) -> list[str]:
    """The names of the env's reward components, from one episode with empty replies (the one driver plays it)."""
    from aligngym.agents.scripted import ScriptedAgent
    from aligngym.envs.base import run_sync
    from aligngym.episode import run_episode

    group = run_sync(run_episode(env, ScriptedAgent([""]), seed=0))
    if group[0].error:
        raise RuntimeError(
            f"an episode with empty replies failed, so its reward components are unknown: {group[0].error}"
        )
    return sorted({name for traj in group for name in traj.reward_components})
