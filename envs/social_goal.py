"""aligngym/SocialGoal-v0: Sotopia (Zhou et al. 2024): two characters with private goals talk, then are scored.

``agent_0`` and ``agent_1`` play the two characters of a scenario. Each one's first message holds the shared
scenario and only its own character: name, background, goal and secret (never the other's goal or secret).

Turn-taking is simultaneous, to fit the parallel API without discarding actions: each round both agents speak,
and each next sees the other's utterance of that round. So every action is part of the conversation and each
agent's chat alternates cleanly (other's line as the user turn, its own as the assistant turn). ``max_turns``
counts utterances, as Sotopia does (default 20), so an episode has at most ``ceil(max_turns / 2)`` rounds. Either
agent ends the conversation by writing ``[leave]``; the round in which it does is the last.

At the end the evaluator scores each character on Sotopia's seven dimensions (see
:mod:`aligngym.feedback.sotopia`). Reward, given at the end only: the goal score, divided by 10 when
``normalize=True`` (the default, so rewards are in [0, 1] like the other environments) or raw 0..10 otherwise.
``info["reward_components"]`` holds all seven raw dimension scores. ``evaluator`` is ``None``/``"scripted"``
(the deterministic heuristic evaluator), a ``Feedback`` (an object with ``ascore``, called once per
character with ``scenario``, ``transcript`` and ``who`` as context; its score is the 0..10 goal score), or
any agent spec ``resolve_agent`` accepts (a model name such as ``"tiny"``, a ``{"model": ...}`` dict, an
Agent) used as a judge.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from aligngym.agents.factory import resolve_agent
from aligngym.feedback.base import Feedback
from aligngym.feedback.sotopia import LEAVE, ModelEvaluator, Scenario, ScriptedEvaluator, Utterance

from .datasets import load_rows
from .multi_agent import MultiAgentTextEnv, RoundResult, run_sync

AGENTS = ("agent_0", "agent_1")


def load_scenarios(tasks: str | Path | list[dict[str, Any]] = "scenarios") -> list[Scenario]:
    """User rows, a JSONL path, or ``"scenarios"`` for the shipped ``data/social_scenarios.jsonl``."""
    rows = load_rows(tasks, "social_scenarios.jsonl", names=("scenarios",))
    if not rows:
        raise ValueError("no social scenarios given")
    return [Scenario.from_row(row, i) for i, row in enumerate(rows)]


def make_evaluator(spec: Any) -> tuple[Feedback, bool]:
    """An evaluator (a Feedback) from a spec, and whether the environment built (so owns) its judge agent."""
    if spec is None or spec == "scripted":
        return ScriptedEvaluator(), False
    if hasattr(spec, "ascore") and not hasattr(spec, "act"):
        return spec, False
    if isinstance(spec, str):
        # A judge must write seven numbers as JSON: greedy, and room for the whole object.
        spec = {"model": spec, "temperature": 0.0, "max_tokens": 256}
    return ModelEvaluator(resolve_agent(spec)), not hasattr(spec, "act")


class SocialGoalEnv(MultiAgentTextEnv):
    """Two agents role-play a Sotopia scenario with private goals; each is scored on seven social dimensions."""

    description = (
        "Sotopia social goals (Zhou et al. 2024): two characters, private goals, 7-dimension evaluation."
    )

    def __init__(
        self,
        max_turns: int = 20,
        evaluator: Any = None,
        normalize: bool = True,
        tasks: str | Path | list[dict[str, Any]] = "scenarios",
        render_mode: str | None = None,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        super().__init__(list(AGENTS), max_rounds=math.ceil(max_turns / 2), render_mode=render_mode)
        self.max_turns = max_turns
        self.normalize = normalize
        self.scenarios = load_scenarios(tasks)
        self.evaluator, self._owns_judge = make_evaluator(evaluator)
        self.scenario: Scenario | None = None
        self.transcript: list[Utterance] = []

    def new_episode(self, options: dict[str, Any] | None) -> dict[str, str]:
        self.scenario = self.scenarios[int(self.np_random.integers(0, len(self.scenarios)))]
        self.transcript = []
        return {agent: self._briefing(i) for i, agent in enumerate(AGENTS)}

    async def play_round(self, actions: dict[str, str]) -> RoundResult:
        for i, agent in enumerate(AGENTS):
            self.transcript.append(Utterance(i, actions.get(agent, "")))
        left = [a for a in AGENTS if LEAVE in actions.get(a, "").lower()]
        episode_info = {"scenario_id": self.scenario.id, "turns": len(self.transcript)}
        if not left and self.rounds + 1 < self.max_rounds:
            observations = {a: self._relay(i) for i, a in enumerate(AGENTS)}
            return RoundResult(observations=observations, episode_info=episode_info)
        results = await asyncio.gather(
            *(
                self.evaluator.ascore(
                    self.messages[agent],
                    actions.get(agent, ""),
                    scenario=self.scenario,
                    transcript=self.transcript,
                    who=i,
                )
                for i, agent in enumerate(AGENTS)
            )
        )
        rewards, components, infos = {}, {}, {}
        for i, (agent, result) in enumerate(zip(AGENTS, results, strict=True)):
            rewards[agent] = result.score / 10.0 if self.normalize else result.score
            components[agent] = dict(result.components)
            infos[agent] = {
                "character": self.scenario.characters[i].name,
                "overall": result.info.get("overall"),
                "evaluator": result.info.get("evaluator", self.evaluator.name),
                "evaluator_flags": list(result.info.get("flags", ())),
            }
        episode_info.update(
            ended_by="leave" if left else "max_turns",
            left=left,
            transcript=[
                {
                    "speaker": AGENTS[u.speaker],
                    "name": self.scenario.characters[u.speaker].name,
                    "text": u.text,
                }
                for u in self.transcript
            ],
        )
        return RoundResult(
            rewards=rewards, done=True, components=components, infos=infos, episode_info=episode_info
        )

    def close(self) -> None:
        """Release the judge model when this environment built it."""
        agent = getattr(self.evaluator, "agent", None)
        if self._owns_judge and agent is not None:
            run_sync(agent.aclose())

    def _briefing(self, who: int) -> str:
        me, other = self.scenario.characters[who], self.scenario.characters[1 - who]
        return (
            f"Scenario: {self.scenario.scenario}\n\n"
            f"You are {me.name}. {me.background}\n"
            f"Your goal: {me.goal}\n"
            f"Your secret (others must not learn it): {me.secret}\n\n"
            f"You are talking with {other.name}. Reply with only what {me.name} says next, in one or two "
            f"sentences. You both speak at the same time each turn; the conversation lasts at most "
            f"{self.max_turns} utterances in total. To end it early, write {LEAVE}."
        )

    def _relay(self, who: int) -> str:
        other = 1 - who
        said = self.transcript[-2 + other].text.strip() or "(says nothing)"
        return f"{self.scenario.characters[other].name}: {said}"
