"""Per-step overhead of ``TextEnv`` and of ``gym.make``'s wrappers, against a bare ``gymnasium.Env``.

Usage: ``python benchmarks/env_overhead.py --steps 20000`` (``--quick``: a smoke run of seconds whose
figures mean nothing). Each figure is the best of ``--repeat`` runs of
``--steps`` steps, in microseconds per step (resets included, amortised over the episode's turns).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from rich.console import Console
from rich.table import Table

from aligngym.envs.base import StepResult, TextEnv

sys.path.insert(0, str(Path(__file__).parent))
from _bench_stats import interleave  # noqa: E402

ENV_ID = "bench/NoOpText-v0"


class EchoEnv(gym.Env[str, str]):
    """The floor: a bare gymnasium env that echoes the action, with the same turn limit and nothing else."""

    def __init__(self, max_turns: int = 1):
        self.max_turns = max_turns
        self.observation_space = gym.spaces.Text(max_length=64)
        self.action_space = gym.spaces.Text(max_length=64)
        self.turns = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self.turns = 0
        return "hello", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self.turns += 1
        return action, 0.0, False, self.turns >= self.max_turns, {}


class NoOpTextEnv(TextEnv):
    """A ``TextEnv`` whose task and scoring do nothing, so only the base class's bookkeeping is timed."""

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        return "hello", {}

    def turn(self, action: str) -> StepResult:
        return StepResult(observation=action)


def time_steps(env: gym.Env, steps: int, max_turns: int) -> float:
    """Microseconds per step over ``steps`` steps in episodes of ``max_turns`` turns (reset included)."""
    env.reset(seed=0)
    episodes = max(1, steps // max_turns)
    start = time.perf_counter()
    for _ in range(episodes):
        env.reset()
        for _ in range(max_turns):
            env.step("an answer")
    return (time.perf_counter() - start) / (episodes * max_turns) * 1e6


def variants() -> dict[str, Callable[[int], gym.Env]]:
    """Environment factories by label, each taking ``max_turns``."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=NoOpTextEnv)
    return {
        "bare gym.Env (echo)": lambda t: EchoEnv(max_turns=t),
        "TextEnv direct": lambda t: NoOpTextEnv(max_turns=t),
        "TextEnv gym.make": lambda t: gym.make(ENV_ID, max_turns=t),
        "TextEnv gym.make, no checker": lambda t: gym.make(ENV_ID, max_turns=t, disable_env_checker=True),
    }


def main() -> None:
    """Measure every variant at 1 and ``--turns`` turns per episode and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000, help="steps per measurement")
    parser.add_argument("--turns", type=int, default=10, help="turns per episode in the multi-turn column")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat = 200, 1

    turn_counts = [1, args.turns]
    results: dict[str, list[float]] = {label: [] for label in variants()}
    for t in turn_counts:
        cases = {
            label: (lambda make=make, t=t: time_steps(make(t), args.steps, t))
            for label, make in variants().items()
        }
        # Round-robin rounds, so load hits every variant alike; best-of-N: the minimum is the overhead
        # itself, the rest is scheduler and cache noise.
        for label, runs in interleave(cases, args.repeat).items():
            results[label].append(min(runs))

    bare = next(iter(results.values()))
    table = Table(title=f"Per-step overhead, µs (best of {args.repeat} x {args.steps} steps)")
    table.add_column("environment")
    for t in turn_counts:
        table.add_column(f"{t}-turn episodes", justify="right")
        table.add_column("x bare", justify="right")
    for label, figures in results.items():
        cells = []
        for figure, floor in zip(figures, bare, strict=True):
            cells += [f"{figure:.2f}", f"{figure / floor:.1f}"]
        table.add_row(label, *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
