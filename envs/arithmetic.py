"""aligngym/Arithmetic-v0: seeded arithmetic questions with a verifiable integer answer."""

from __future__ import annotations

import re
from typing import Any

from aligngym.feedback.answers import final_value, gold_value, values_equal

from .base import StepResult, TextEnv

_DIGITS = frozenset("0123456789")
_INT = re.compile(r"[-+]?[0-9]+")  # ASCII digits only: \d also matches other scripts' digits


def op_result(a: int, op: str, b: int) -> int:
    """The value of ``a op b``."""
    return {"+": a + b, "-": a - b, "*": a * b}[op]


class ArithmeticEnv(TextEnv):
    """Answer ``a op b`` with the integer result; reward = correct + format_weight * format.

    Reward components:
      - ``correct``: 1 if the answer's final answer (the shared extraction of ``aligngym.feedback.answers``:
        ``12``, ``**12**``, ``The sum is 12.``) equals the result, else 0; several numbers or a denial is 0.
      - ``format``: 1 if the whole answer is a bare integer no longer than any result of this env can be;
        otherwise half the fraction of its characters that are digits, so that a policy that has not yet
        learned the answer format still gets a graded signal.
    With ``max_turns > 1`` a wrong answer is told so and may try again; the reward of a later turn counts the
    ``correct`` part only if it was not already earned.
    """

    success_component = "correct"
    description = "Seeded integer arithmetic with a verifiable answer (correct + format components)."

    def __init__(
        self,
        max_operand: int = 9,
        operators: str = "+",
        format_weight: float = 0.5,
        max_turns: int = 1,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if not operators or set(operators) - set("+-*"):
            raise ValueError(f"operators must be a non-empty string of '+', '-', '*'; got {operators!r}")
        if max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {max_operand}")
        self.max_operand = max_operand
        self.operators = operators
        self.format_weight = format_weight
        self.answer = 0
        extremes = [
            op_result(a, op, b) for op in operators for a in (0, max_operand) for b in (0, max_operand)
        ]
        self.max_answer_chars = max(len(str(x)) for x in extremes)

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        a, b = (int(x) for x in self.np_random.integers(0, self.max_operand + 1, size=2))
        op = self.operators[int(self.np_random.integers(0, len(self.operators)))]
        self.answer = op_result(a, op, b)
        return f"{a}{op}{b}=", {"answer": self.answer}

    def turn(self, action: str) -> StepResult:
        text = action.strip()
        correct = float(values_equal(gold_value(str(self.answer)), final_value(text)))
        if _INT.fullmatch(text) and len(text) <= self.max_answer_chars:
            fmt = 1.0
        else:
            fmt = 0.5 * sum(c in _DIGITS for c in text) / len(text) if text else 0.0
        reward = correct + self.format_weight * fmt
        if self.turns > 1:
            reward -= self.episode_reward  # later turns pay only the improvement
        return StepResult(
            observation="" if correct else "Wrong. Try again: answer with the number only.",
            reward=reward,
            terminated=bool(correct),
            components={"correct": correct, "format": fmt},
            info={"answer": self.answer},
        )
