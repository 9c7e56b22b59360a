"""Binary verifiers: is the response's final answer the gold answer (exact, normalised, numeric, math-equivalent)?

Extraction and comparison live in :mod:`aligngym.feedback.answers`, shared by every env that grades a final
answer; this module only chooses how strictly to compare.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from .answers import (
    answers_agree,
    extract_answer,
    final_value,
    gold_value,
    is_number,
    math_equal,
    numbers_close,
    parse_short,
    text_agree,
    values_equal,
)
from .base import FeedbackResult, Message

__all__ = ["Mode", "Verifier", "answers_agree", "extract_answer", "math_equal"]

Mode = Literal["exact", "normalized", "numeric", "math"]


@dataclass
class Verifier:
    """Correct / incorrect against ``gold`` (passed as context), in one of four matching modes.

    - ``exact``: the extracted final answer is the gold string.
    - ``normalized``: a numeric gold is compared as a number; other golds as normalised text (the gold
      phrase, optionally with filler words such as "it is").
    - ``numeric``: one number within ``tolerance`` (relative and absolute) of the gold.
    - ``math``: equal as maths (``1/2`` = ``0.5`` = ``\\frac{1}{2}``; ``2x + x`` = ``3x``) via math-verify;
      a gold with no maths in it is compared as text.
    In every mode a response that states several different final answers, or denies one, scores 0.
    """

    mode: Mode = "normalized"
    tolerance: float = 1e-6
    name: str = "verifier"

    def __post_init__(self) -> None:
        if self.mode not in typing.get_args(Mode):
            raise ValueError(f"mode must be one of {', '.join(typing.get_args(Mode))}, got {self.mode!r}")

    def check(self, response: str, gold: str) -> bool:
        """Whether ``response``'s final answer matches ``gold``."""
        gold = str(gold).strip()
        if self.mode == "exact":
            return extract_answer(response) == gold
        if self.mode == "numeric":
            return numbers_close(gold, final_value(response), self.tolerance)
        # "normalized" compares only a numeric gold as a value; either mode matches a gold with no maths in it
        # ("Paris") as text.
        want = gold_value(gold) if self.mode == "math" or is_number(gold) else None
        if want is None:
            return text_agree(parse_short(response), [gold])
        return values_equal(want, final_value(response))

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """1.0 if correct else 0.0; ``context["gold"]`` is required."""
        if "gold" not in context:
            raise ValueError("Verifier needs the gold answer: pass gold=... as context")
        ok = self.check(response, str(context["gold"]))
        return FeedbackResult(float(ok), {"correct": float(ok)}, info={"extracted": extract_answer(response)})
