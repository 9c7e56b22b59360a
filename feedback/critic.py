"""A critic: a text critique of a response (the rationale), from a critic agent or a scripted critic.

The score is 0 unless the critique states one explicitly (``Score: N``, ``{"score": N}``, ``N/10``; strict
parsing, so a number quoted from the response is never read as a score), then it is normalised to [0, 1].

The scripted critic (``agent=None``) is deterministic:

* an empty response: "The response is empty".
* with a gold answer in the context (``gold=...``): the response's final answer (``extract_answer``) is
  checked with ``answers_agree`` (maths equivalence); a wrong one is named ("The final answer '5' is incorrect ...")
  without revealing the gold, a right one is confirmed.
* without a gold answer: fewer than 3 words is "too short"; fewer than 8 words "gives no reasoning".
* either way, a response with no explicit final answer (``Answer: ...`` or ``\\boxed{}``) is told to add one.
* nothing found: "No problems found."
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .answers import answers_agree, extract_answer
from .base import FeedbackResult, Message
from .judge import parse_score, render_chat

_MARKED_ANSWER = re.compile(r"\\boxed\{|answer\s*(?:is|:)", re.IGNORECASE)


def scripted_critique(response: str, gold: Any = None) -> str:
    """The scripted critic's critique of ``response`` (rules in the module docstring)."""
    words = response.split()
    if not words:
        return "The response is empty: it does not answer the question at all. Write a complete answer."
    problems: list[str] = []
    if gold is not None:
        answer = extract_answer(response)
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        if answers_agree(answer, str(gold)):
            problems.append(f"The final answer '{shown}' is correct.")
        else:
            problems.append(
                f"The final answer '{shown}' is incorrect. Re-check each step of the working and fix the mistake."
            )
    elif len(words) < 3:
        problems.append("The response is too short to be useful.")
    elif len(words) < 8:
        problems.append("The response gives no reasoning; explain how you got the answer.")
    if not _MARKED_ANSWER.search(response):
        problems.append("There is no explicit final answer: end with a line 'Answer: <your answer>'.")
    return " ".join(problems) or "No problems found."


class Critic:
    """Critique a response with a critic agent, or the scripted critic when ``agent`` is None."""

    def __init__(
        self,
        agent: Any = None,
        name: str = "critic",
        scale: tuple[float, float] = (1, 10),
        show_reference: bool = False,
    ):
        self.agent = agent
        self.name = name
        self.scale = scale
        # A model critic that sees the gold tends to leak it into the critique; off unless asked for.
        self.show_reference = show_reference

    def prompt(self, messages: Sequence[Message], response: str, gold: Any = None) -> list[Message]:
        """The critic's chat: the conversation, the response, and what a useful critique contains."""
        reference = f"\n\n[Reference answer]\n{gold}" if self.show_reference and gold is not None else ""
        text = (
            f"[Conversation]\n{render_chat(messages)}\n\n[Response to critique]\n{response}{reference}\n\n"
            "Write a short, specific critique of the response: point out mistakes, missing steps and unclear "
            "parts, and say what should change. Do not write a corrected response yourself."
        )
        return [
            {"role": "system", "content": "You are a rigorous reviewer of AI assistant responses."},
            {"role": "user", "content": text},
        ]

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """The critique as rationale; score from an explicit score in it, else 0."""
        gold = context.get("gold")
        if self.agent is None:
            text = scripted_critique(response, gold)
        else:
            text = (await self.agent.act(self.prompt(messages, response, gold))).text or ""
        raw = parse_score(text, self.scale, lenient=False)
        if raw is None:
            return FeedbackResult(0.0, {}, text, {"has_score": False})
        low, high = self.scale
        return FeedbackResult((raw - low) / (high - low), {"critic_raw": raw}, text, {"has_score": True})
