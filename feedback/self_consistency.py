"""Self-consistency (Wang et al. 2023) as feedback: how many fresh samples agree with the response's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .answers import answers_agree, extract_answer, majority
from .base import FeedbackResult, Message


@dataclass
class SelfConsistency:
    """Score = the fraction of ``n`` samples from ``agent`` whose answer agrees with the response's answer."""

    agent: Any = field(metadata={"help": "The sampler: any Agent; sampling temperature is the agent's."})
    n: int = field(default=5, metadata={"help": "How many answers to sample for each scored response."})
    extract: Callable[[str], str] = field(
        default=extract_answer, metadata={"help": "Reads the final answer out of a response."}
    )
    name: str = "self_consistency"
    agree: Callable[[str, str], bool] = field(
        default=answers_agree, metadata={"help": "Whether two extracted answers are the same answer."}
    )

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """Sample ``n`` answers concurrently and count the ones that agree with ``response``."""
        replies = await asyncio.gather(*(self.agent.act([dict(m) for m in messages]) for _ in range(self.n)))
        answers = [self.extract(reply.text or "") for reply in replies]
        mine = self.extract(response)
        agreement = sum(self.agree(mine, a) for a in answers) / self.n
        # Clustered by the agreement relation: answers can be equal as maths without being equal as text.
        vote = majority(answers, self.agree)
        in_majority = float(vote is not None and self.agree(mine, vote))
        return FeedbackResult(
            agreement,
            {"agreement": agreement, "majority": in_majority},
            info={"answers": answers, "response_answer": mine, "majority_answer": vote},
        )
