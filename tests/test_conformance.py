"""The public conformance check fails, naming the property, on envs that break one; a sound env passes."""

from __future__ import annotations

import itertools

import gymnasium as gym
import pytest

import aligngym
from aligngym.envs import StepResult, TextEnv


class Sound(TextEnv):
    """Say the seeded word back (a sound env each broken one below changes in one way)."""

    def __init__(self, max_turns: int = 2):
        super().__init__(max_turns=max_turns)
        self.word = ""

    def new_episode(self, options):
        self.word = str(self.np_random.integers(0, 10**6))
        return f"Say {self.word}.", {}

    def turn(self, action):
        correct = float(action.strip() == self.word)
        return StepResult("Again.", correct, bool(correct), components={"correct": correct})


_ticks = itertools.count()


class Unseeded(Sound):
    """Draws its word from a counter, not from the seed."""

    def new_episode(self, options):
        self.word = str(next(_ticks))
        return f"Say {self.word}.", {}


class DriftsLater(Sound):
    """Seeded, but its second turn's hint counts calls across episodes (Gymnasium checks one step only)."""

    def turn(self, action):
        result = super().turn(action)
        if self.turns == 2:
            result.observation = f"Again ({next(_ticks)})."
        return result


_instances = itertools.count()


class DependsOnInstance(Sound):
    """Seeded per instance only: the n-th env built shifts its words by n."""

    def __init__(self, max_turns: int = 2):
        super().__init__(max_turns)
        self.shift = next(_instances)

    def new_episode(self, options):
        self.word = str(int(self.np_random.integers(0, 10**6)) + self.shift)
        return f"Say {self.word}.", {}


class ClosesOnce(Sound):
    """Its second close raises."""

    closed = False

    def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True
        super().close()


class AsciiOnly(Sound):
    """Its action space is Gymnasium's default Text (alphanumerics only)."""

    def __init__(self, max_turns: int = 2):
        super().__init__(max_turns)
        self.action_space = gym.spaces.Text(100)


class NoComponents(Sound):
    """Its info has no reward components."""

    def _info(self, extra, components):
        info = super()._info(extra, components)
        del info["reward_components"]
        return info


class ChokesOnUnicode(Sound):
    """Its grader encodes the reply as ASCII."""

    def turn(self, action):
        action.encode("ascii")
        return super().turn(action)


class NanReward(Sound):
    """Pays NaN."""

    def turn(self, action):
        return StepResult("Again.", float("nan"), False, components={"correct": 0.0})


def test_a_sound_env_passes(scratch):
    aligngym.check_conformance(scratch(Sound))


@pytest.mark.parametrize(
    "cls, failed",
    [
        (Unseeded, "gymnasium's check_env: Using `env.reset(seed=123)` is non-deterministic"),
        (DriftsLater, "same seed (7), same episode: the same env reset again differs at step 2"),
        (DependsOnInstance, "same seed (7), same episode: a fresh env differs at step 0"),
        (ClosesOnce, "close twice: RuntimeError: already closed"),
        (AsciiOnly, "Unicode text: the action space rejects Unicode text"),
        (NoComponents, "chat contract: info['reward_components'] is missing"),
        (ChokesOnUnicode, "Unicode text: UnicodeEncodeError"),
        (NanReward, "gymnasium's check_env"),
    ],
)
def test_a_broken_env_fails_naming_the_property(scratch, cls, failed):
    env_id = scratch(cls)
    with pytest.raises(AssertionError) as caught:
        aligngym.check_conformance(env_id)
    assert str(caught.value).startswith(f"{env_id}: {failed}"), str(caught.value)


def test_env_kwargs_and_seed_reach_the_env(scratch):
    env_id = scratch(Sound)
    with pytest.raises(AssertionError, match=r"builds with \{'max_turns': 0\}: ValueError: max_turns"):
        aligngym.check_conformance(env_id, {"max_turns": 0})
    aligngym.check_conformance(env_id, {"max_turns": 1}, seed=123)


def test_an_unknown_id_fails_as_not_registered():
    with pytest.raises(AssertionError, match=r"^nobody/Nothing-v0: registered: unknown environment id"):
        aligngym.check_conformance("nobody/Nothing-v0")
