"""The public conformance check on multi-agent envs: the registry's pass (tests/test_registry_conformance.py);
here, envs that break one property fail naming it."""

from __future__ import annotations

import itertools

import pytest

import aligngym
from aligngym.envs.multi_agent import MultiAgentTextEnv, RoundResult
from aligngym.envs.registry import registered


def test_registry_has_multi_agent_envs():
    assert "aligngym/Debate-v0" in [i for i, e in registered().items() if e.multi_agent]


class Pair(MultiAgentTextEnv):
    """Two seats each say the seeded number; two rounds (a sound env each broken one changes in one way)."""

    def __init__(self):
        super().__init__(["agent_0", "agent_1"], max_rounds=2)
        self.number = 0

    def new_episode(self, options):
        self.number = int(self.np_random.integers(0, 1000))
        return dict.fromkeys(self.possible_agents, f"Say {self.number}.")

    async def play_round(self, actions):
        right = {a: float(text.strip() == str(self.number)) for a, text in actions.items()}
        return RoundResult(
            observations=dict.fromkeys(actions, "Again."),
            rewards=right,
            components={a: {"correct": r} for a, r in right.items()},
        )


_ticks = itertools.count()


class Unseeded(Pair):
    """Draws its number from a counter, not from the seed."""

    def new_episode(self, options):
        self.number = next(_ticks)
        return dict.fromkeys(self.possible_agents, f"Say {self.number}.")


class OneChat(Pair):
    """Shows every seat the first seat's chat."""

    def _info(self, agent, extra, components):
        return super()._info(self.possible_agents[0], extra, components)


class ClosesOnce(Pair):
    """Its second close raises."""

    closed = False

    def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


def test_a_sound_multi_agent_env_passes(scratch):
    aligngym.check_conformance(scratch(Pair, multi_agent=True))


@pytest.mark.parametrize(
    "cls, failed",
    [
        (Unseeded, "same seed (7), same episode: the same env reset again differs at step 0"),
        (OneChat, "one chat per seat: agent_1's chat does not hold its own reply"),
        (ClosesOnce, "close twice: RuntimeError: already closed"),
    ],
)
def test_a_broken_multi_agent_env_fails_naming_the_property(scratch, cls, failed):
    env_id = scratch(cls, multi_agent=True)
    with pytest.raises(AssertionError) as caught:
        aligngym.check_conformance(env_id)
    assert str(caught.value).startswith(f"{env_id}: {failed}"), str(caught.value)
