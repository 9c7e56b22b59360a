"""The feedback contract: score a response (or a whole trajectory), keep the named parts, say why."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]


@dataclass
class FeedbackResult:
    """A score with its named components and, where the signal has one, a text rationale."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    rationale: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Feedback(Protocol):
    """Anything that scores a response to a chat: verifiers, unit tests, models, judges, peers, rubrics.

    Envs grade through this one contract; what a signal needs beyond the chat comes as context (``gold`` for
    a ``Verifier``, ``task`` for ``UnitTestVerifier``, ``scenario``/``transcript``/``who`` for a Sotopia
    evaluator), and a signal without what it needs raises ``ValueError``.
    """

    name: str

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """Score ``response`` as the answer to ``messages``; ``context`` carries task facts (gold answer, ...)."""
        ...


def score(feedback: Feedback, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
    """Sync convenience around ``ascore`` for scripts and tests (not for use inside an event loop)."""
    return asyncio.run(feedback.ascore(messages, response, **context))


@dataclass
class Rubric:
    """A weighted sum of feedbacks; every part's score is kept as a component named after it."""

    parts: list[tuple[Feedback, float]]
    name: str = "rubric"

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """Score with every part (concurrently) and add them up with their weights."""
        results = await asyncio.gather(*(f.ascore(messages, response, **context) for f, _ in self.parts))
        components: dict[str, float] = {}
        total = 0.0
        rationales = []
        for (feedback, weight), result in zip(self.parts, results, strict=True):
            total += weight * result.score
            components[feedback.name] = result.score
            for key, value in result.components.items():
                components[f"{feedback.name}/{key}"] = value
            if result.rationale:
                rationales.append(f"{feedback.name}: {result.rationale}")
        return FeedbackResult(total, components, "\n".join(rationales) or None)
