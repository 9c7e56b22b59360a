"""Binary verifiers: is the response's answer the gold answer (exact, normalised, numeric, math-equivalent)?"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from aligngym.envs.answers import normalize, parse_number

from .base import FeedbackResult, Message

Mode = Literal["exact", "normalized", "numeric", "math"]
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER = re.compile(r"answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The final answer of a response: the last ``\\boxed{...}``, else after the last ``Answer:``, else the last line."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    said = _ANSWER.findall(text)
    if said:
        return said[-1].strip().rstrip(".")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# sympy's parser calls eval(), so model text must be reduced to plain arithmetic before it gets there:
# only these characters, identifiers from this list, and no exponent big enough to hang simplify().
_MATH_CHARS = re.compile(r"^[0-9A-Za-z+\-*/().,\s]{1,200}$")
_IDENT = re.compile(r"[A-Za-z_]+")
_SAFE_NAMES = {"sqrt", "pi", "E", "I", "sin", "cos", "tan", "log", "exp", "oo"}
_BIG_POWER = re.compile(r"\*\*\s*(\(|\d{3,})|(\*\*.*){3,}")


def _safe_math(text: str) -> str | None:
    text = (
        text.strip()
        .strip("$")
        .replace("^", "**")
        .replace("\\cdot", "*")
        .replace("\\left", "")
        .replace("\\right", "")
    )
    text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text).replace("\\", "")
    if not _MATH_CHARS.match(text) or _BIG_POWER.search(text):
        return None
    if any(len(name) > 1 and name not in _SAFE_NAMES for name in _IDENT.findall(text)):
        return None
    return text


def math_equal(a: str, b: str) -> bool:
    """Whether two math expressions are equal (sympy), e.g. ``1/2`` and ``0.5``; unsafe or unparseable -> False."""
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    left, right = _safe_math(a), _safe_math(b)
    if left is None or right is None:
        return False
    try:
        parse = lambda t: parse_expr(t, transformations=standard_transformations, evaluate=True)  # noqa: E731
        return bool(sympy.simplify(parse(left) - parse(right)) == 0)
    except Exception:  # sympy raises many kinds on odd input; unparseable means not verified
        return False


_NUMERIC = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+)?")
_VARIABLE = re.compile(r"^\s*[A-Za-z]\s*=\s*")


def answers_agree(a: str, b: str) -> bool:
    """Whether two extracted answers say the same: equal as maths (``1/2``, ``0.5``) or as normalised text.

    A leading ``x =`` is ignored. Numbers are compared only as maths, because text normalisation drops
    signs, points and slashes (``-5`` would equal ``5`` and ``16`` would equal ``1/6``).
    """
    a, b = _VARIABLE.sub("", a or "").strip().rstrip("."), _VARIABLE.sub("", b or "").strip().rstrip(".")
    if not a or not b:
        return False
    if _NUMERIC.fullmatch(a) or _NUMERIC.fullmatch(b):
        return math_equal(a, b)
    return normalize(a) == normalize(b) or math_equal(a, b)


@dataclass
class Verifier:
    """Correct / incorrect against ``gold`` (passed as context), in one of four matching modes."""

    mode: Mode = "normalized"
    tolerance: float = 1e-6
    name: str = "verifier"

    def check(self, response: str, gold: str) -> bool:
        """Whether ``response``'s final answer matches ``gold``."""
        answer = extract_answer(response)
        if self.mode == "exact":
            return answer == gold.strip()
        if self.mode == "normalized":
            if _NUMERIC.fullmatch(gold.strip()):
                return answers_agree(answer, gold)  # text normalisation would drop signs, points and slashes
            return normalize(answer) == normalize(gold)
        if self.mode == "numeric":
            got, want = parse_number(answer), parse_number(gold)
            if got is None or want is None:
                return False
            return math.isclose(float(got), float(want), rel_tol=self.tolerance, abs_tol=self.tolerance)
        return answers_agree(answer, gold)

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """1.0 if correct else 0.0; ``context["gold"]`` is required."""
        if "gold" not in context:
            raise ValueError("Verifier needs the gold answer: pass gold=... as context")
        ok = self.check(response, str(context["gold"]))
        return FeedbackResult(float(ok), {"correct": float(ok)}, info={"extracted": extract_answer(response)})
