"""aligngym/Arithmetic-v0: seeded arithmetic questions with a verifiable integer answer."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from aligngym.feedback.answers import Number, final_value, gold_value, values_equal

from .base import StepResult, TextEnv

_DIGITS = frozenset("0123456789")
_INT = re.compile(r"[-+]?[0-9]+")  # ASCII digits only: \d also matches other scripts' digits
SPLITS = ("all", "train", "test")
NOTATIONS = ("decimal", "unary")


def op_result(a: int, op: str, b: int) -> int:
    """The value of ``a op b``."""
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def all_questions(max_operand: int, operators: str, max_answer_chars: int | None = None) -> list[tuple]:
    """Every question ``(a, op, b)`` with operands in 0..max_operand, optionally only short-answered ones."""
    return [
        (a, op, b)
        for op in operators
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        if max_answer_chars is None or len(str(op_result(a, op, b))) <= max_answer_chars
    ]


def split_questions(questions: list[tuple], test_fraction: float) -> dict[str, list[tuple]]:
    """``questions`` split into ``train`` and ``test`` (held-out) lists, both non-empty, in their order.

    The test questions are the ``round(test_fraction * len(questions))`` with the smallest SHA-256 of their
    text: a fixed choice that no library version, seed or config order can move, and that spreads over the
    whole table instead of taking one corner of it.
    """
    ranked = sorted(questions, key=lambda q: hashlib.sha256(f"{q[0]}{q[1]}{q[2]}=".encode()).hexdigest())
    test = set(ranked[: min(len(questions) - 1, max(1, round(test_fraction * len(questions))))])
    return {"train": [q for q in questions if q not in test], "test": [q for q in questions if q in test]}


class ArithmeticEnv(TextEnv):
    """Answer ``a op b`` with the integer result; reward = correct + format_weight * format.

    Reward components:
      - ``correct``: 1 if the answer's final answer (the shared extraction of ``aligngym.feedback.answers``:
        ``12``, ``**12**``, ``The sum is 12.``) is a number equal to the result, else 0; several numbers or a
        denial is 0, and so is an expression equal to the result (``7+5``: the question echoed back).
      - ``format``: 1 if the whole answer is a bare integer no longer than any result of this env can be;
        otherwise half the fraction of its characters that are digits, so that a policy that has not yet
        learned the answer format still gets a graded signal.
    With ``max_turns > 1`` a wrong answer is told so and may try again; the reward of a later turn counts the
    ``correct`` part only if it was not already earned.

    ``max_answer_chars`` keeps only the questions whose answer is that short (1: answers 0..9). ``split``
    ``"train"`` or ``"test"`` draws questions from one side of a fixed partition of those questions
    (``split_questions``, ``test_fraction`` of them held out), so a policy trained on one split can be scored
    on questions it never saw; ``"all"`` (the default) draws from every question. ``notation="unary"`` writes
    the operands as tally marks (``|||+||||=`` asks 3+4); the answer is still a decimal number.
    """

    success_component = "correct"
    description = "Seeded integer arithmetic with a verifiable answer (correct + format components)."

    def __init__(
        self,
        max_operand: int = 9,
        operators: str = "+",
        format_weight: float = 0.5,
        max_turns: int = 1,
        max_answer_chars: int | None = None,
        split: str = "all",
        test_fraction: float = 0.2,
        notation: str = "decimal",
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if not operators or set(operators) - set("+-*"):
            raise ValueError(f"operators must be a non-empty string of '+', '-', '*'; got {operators!r}")
        if max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {max_operand}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if notation not in NOTATIONS:
            raise ValueError(f"notation must be one of {', '.join(NOTATIONS)}; got {notation!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
        self.max_operand = max_operand
        self.operators = operators
        self.format_weight = format_weight
        self.split = split
        self.notation = notation
        #: The questions drawn from, or None: a, op and b drawn uniformly (the original draw, kept for seeds).
        self.questions: list[tuple] | None = None
        if split != "all" or max_answer_chars is not None:
            pool = all_questions(max_operand, operators, max_answer_chars)
            if len(pool) < 2:
                raise ValueError(f"max_answer_chars={max_answer_chars} leaves {len(pool)} questions; need 2")
            self.questions = pool if split == "all" else split_questions(pool, test_fraction)[split]
        self.answer = 0
        extremes = [
            op_result(a, op, b) for op in operators for a in (0, max_operand) for b in (0, max_operand)
        ]
        self.max_answer_chars = max(len(str(x)) for x in extremes)
        if max_answer_chars is not None:
            self.max_answer_chars = min(self.max_answer_chars, max_answer_chars)

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        if self.questions is not None:
            a, op, b = self.questions[int(self.np_random.integers(0, len(self.questions)))]
        else:
            a, b = (int(x) for x in self.np_random.integers(0, self.max_operand + 1, size=2))
            op = self.operators[int(self.np_random.integers(0, len(self.operators)))]
        self.answer = op_result(a, op, b)
        if self.notation == "unary":
            return f"{'|' * a}{op}{'|' * b}=", {"answer": self.answer}
        return f"{a}{op}{b}=", {"answer": self.answer}

    def turn(self, action: str) -> StepResult:
        text = action.strip()
        value = final_value(text)
        # A number, not an expression: echoing the question ("7+5") would otherwise grade as its own answer.
        correct = float(isinstance(value, Number) and values_equal(gold_value(str(self.answer)), value))
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
