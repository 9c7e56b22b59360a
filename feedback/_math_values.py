"""Maths values of a final answer: plain numbers exactly (no sympy), anything else through math-verify.

Safety: model text never reaches ``eval``. Plain numbers and ``a/b`` become :class:`fractions.Fraction` here.
Anything else must pass :func:`latex_is_safe` (allow-listed commands, bounded length and literals) and is
then parsed by latex2sympy's ANTLR grammar (via ``math_verify.parse`` with only the LaTeX target, never the
``parse_expr`` expression target). The only strings latex2sympy hands to ``sympify`` are its lexer's number
tokens (``[0-9]*.?[0-9]+``). Parsed expressions must pass :func:`expr_is_bounded` before math-verify compares
them, because comparison calls ``simplify``/``doit``: no signal-based timeouts are used (graders run in
worker threads), so the bounds are what keeps every call short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

#: Longest LaTeX / expression text that is parsed at all; real final answers are far shorter.
MAX_EXPR_CHARS = 300
#: Longest digit string in an answer (an integer above 10**60 is not a final answer to grade).
MAX_DIGITS = 60
#: Most nodes a parsed expression may have before comparison.
MAX_NODES = 120
#: Most elements in a list answer (``2, 3, 5``).
MAX_ITEMS = 20

_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_PLAIN_NUMBER = re.compile(rf"([-+]?)({_NUM})(?:\s*/\s*({_NUM}))?")
_FRAC = re.compile(rf"([-+]?)\\[dt]?frac\{{\s*([-+]?)({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}")
# Decorations that never change a number's value: units in \text{}, degrees, percent, currency, spacing.
_DECORATION = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mbox|operatorname)\s*\{[A-Za-z\s.]*\}"
    r"|\^\s*\{?\\circ\}?|\^\s*\{?\\degree\}?|°|\\?%|\\\$|\$|\\[,;:! ]|\\q?quad|\\displaystyle|\\left|\\right|~"
)
_THIN_THOUSANDS = re.compile(r"(?<![0-9.])([0-9]{1,3})((?:(?:\\,|\{,\}|\\!|\\ )[0-9]{3})+)(?![0-9])")


def word_set(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text`` (keeps long word lists readable)."""
    return frozenset(text.split())


# -- LaTeX allow-list --------------------------------------------------------------------------------
_ALLOWED_COMMANDS = word_set(
    "frac dfrac tfrac sqrt cdot times div pm mp left right pi infty le leq ge geq lt gt ne neq "
    "approx in notin cup cap emptyset varnothing setminus circ degree text textbf textit textrm "
    "mathrm mathbf mbox log ln exp sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh binom "
    "dbinom tbinom choose quad qquad displaystyle mathbb lfloor rfloor lceil rceil alpha beta gamma "
    "delta theta lambda mu sigma phi omega tau rho"
)
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_TEXT_ARG = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_HEDGE_WORDS = word_set("or and not nor either neither maybe perhaps possibly no never except")
# Numbers glued to letters that read as something else: 4e0 (4*e*0 to latex2sympy), 0x4, 0b1.
_ODD_LITERAL = re.compile(r"[0-9][eE][-+]?[0-9]|0[xXbBoO][0-9A-Fa-f]")
# Two numbers side by side with only spacing between: latex2sympy reads "3 \quad 4" as 3 + 4.
_SPACED_NUMBERS = re.compile(r"[0-9.](?:\s|\\[,;:! ]|\\q?quad|~)+[0-9.]")
_DIGIT_RUN = re.compile(r"[0-9]+")
_COMBINATORIAL = re.compile(r"\\[dt]?binom|\\choose|!(?!=)|\\gcd|\\lcm")


@dataclass(frozen=True)
class Number:
    """An exact number as written: ``decimal`` with a decimal point (compared to 6 places), ``percent`` with %."""

    value: Fraction
    decimal: bool = False
    percent: bool = False

    def text(self) -> str:
        """Canonical text: ``5050``, ``-1/2``."""
        v = self.value
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


@dataclass(frozen=True)
class Symbolic:
    """A sympy expression from latex2sympy that passed the size bounds."""

    expr: Any

    def text(self) -> str:
        """Canonical text (sympy's printer)."""
        return str(self.expr)


@dataclass(frozen=True)
class Many:
    """Several values stated together (``2, 3``; ``x = 2 or x = 3``): only a list gold can equal it."""

    items: tuple[Number | Symbolic, ...]

    def text(self) -> str:
        """Canonical text: the items' texts joined by commas."""
        return ", ".join(i.text() for i in self.items)


Value = Number | Symbolic | Many


def _number(text: str) -> Fraction | None:
    digits = text.replace(",", "")
    if sum(c.isdigit() for c in digits) > MAX_DIGITS:
        return None
    return Fraction(digits)


def plain_number(text: str) -> Number | None:
    """``5,050``, ``-4.0``, ``1/2``, ``\\frac{1}{2}``, ``50\\%``, ``4 \\text{ cm}`` -> a Number; else None."""
    percent = text.rstrip().endswith("%")
    # A space, not nothing, where a decoration was: "4\\text{or}5" must not become 45.
    text = _DECORATION.sub(" ", _THIN_THOUSANDS.sub(_join_groups, text)).strip().strip("{}()").strip()
    if len(text) > 2 * MAX_DIGITS + 10:
        return None
    match = _PLAIN_NUMBER.fullmatch(text)
    if match:
        sign, top, bottom = match.groups()
        value, decimal = _number(top), "." in top
        if bottom is not None:
            den = _number(bottom)
            value = None if den in (None, 0) or value is None else value / den
            decimal = decimal or "." in bottom
    elif match := _FRAC.fullmatch(text):
        sign, inner, top, bottom = match.groups()
        num, den = _number(top), _number(bottom)
        value = None if num is None or den in (None, 0) else num / den
        sign, decimal = ("-" if (sign == "-") != (inner == "-") else ""), "." in top + bottom
    else:
        return None
    if value is None:
        return None
    return Number(-value if sign == "-" else value, decimal, percent)


def _join_groups(match: re.Match) -> str:
    return match.group(1) + re.sub(r"[^0-9]", "", match.group(2))


def latex_is_safe(text: str) -> bool:
    """Whether LaTeX/plain maths may go to latex2sympy: short, ASCII, allow-listed commands, bounded literals."""
    if not text or len(text) > MAX_EXPR_CHARS or not text.isascii():
        return False
    if any(name not in _ALLOWED_COMMANDS for name in _COMMAND.findall(text)):
        return False
    for arg in _TEXT_ARG.findall(text):  # \text{} may carry a unit, never a number or a hedge
        if not re.fullmatch(r"[A-Za-z\s.]*", arg) or _HEDGE_WORDS & set(arg.lower().split()):
            return False
    if _ODD_LITERAL.search(text) or _SPACED_NUMBERS.search(text):
        return False
    runs = [len(r) for r in _DIGIT_RUN.findall(text)]
    if any(n > MAX_DIGITS for n in runs):
        return False
    # latex2sympy evaluates binomials, factorials, gcd/lcm while parsing: keep their arguments small.
    return not (_COMBINATORIAL.search(text) and any(n > 4 for n in runs))


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    """math-verify, imported on first use (it imports sympy: about half a second)."""
    import math_verify.grader
    import math_verify.parser

    # We pass parsing_timeout=None / timeout_seconds=None (no SIGALRM, which fails off the main thread);
    # these flags only silence the one-time warning about that, our own bounds replace the timeout.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def expr_is_bounded(expr: Any) -> bool:
    """Whether comparing ``expr`` stays cheap: few nodes, small integers, small powers and factorials."""
    import sympy

    for nodes, node in enumerate(sympy.preorder_traversal(expr), 1):
        if nodes > MAX_NODES:
            return False
        if isinstance(node, sympy.Integer) and abs(int(node)).bit_length() > 200:
            return False
        if isinstance(node, sympy.Float) and not node.is_finite:
            return False
        if isinstance(node, sympy.Pow) and not _pow_is_bounded(node):
            return False
        if isinstance(node, sympy.factorial | sympy.binomial) and any(
            a.is_Number and abs(a) > 1000 for a in node.args
        ):
            return False
    return True


def _pow_is_bounded(node: Any) -> bool:
    import sympy

    base, exp = node.args
    if not (base.is_finite is not False and exp.is_finite):  # oo^2, 2^oo, zoo^x: no answer
        return False
    if exp.is_Number:
        if abs(exp) > 1000:
            return False
        return not base.is_Number or abs(float(exp)) * max(1, int(abs(base)).bit_length()) < 4096
    # A symbolic exponent may not itself hold a power or large numbers (x^{2^{100}}).
    return not exp.has(sympy.Pow) and all(abs(a) <= 1000 for a in exp.atoms(sympy.Number))


@lru_cache(maxsize=4096)
def latex_value(text: str) -> Symbolic | None:
    """The sympy value of a LaTeX/plain expression via math-verify, or None if unsafe or unparseable."""
    if not latex_is_safe(text):
        return None
    mv = _math_verify()
    try:
        parsed = mv.parse(
            f"${text}$",
            extraction_config=[mv.LatexExtractionConfig(boxed_match_priority=0)],
            fallback_mode="no_fallback",
            extraction_mode="first_match",
            parsing_timeout=None,
        )
        if len(parsed) != 1 or isinstance(parsed[0], str) or not expr_is_bounded(parsed[0]):
            return None
    except Exception:  # odd input makes sympy raise many kinds: "no answer", never a crash
        return None
    return Symbolic(parsed[0])


def _to_sympy(value: Number | Symbolic) -> Any:
    import sympy

    if isinstance(value, Symbolic):
        return value.expr
    v = value.value
    if value.decimal:  # keep math-verify's float semantics (0.333333 equals 1/3 to 6 places)
        return sympy.Float(float(v))
    return sympy.Rational(v.numerator, v.denominator)


def _numbers_equal(a: Number, b: Number) -> bool:
    if a.percent != b.percent:  # 75% answers 75 and 0.75 alike: still one number, read two ways
        scaled = Number(a.value / 100, True) if a.percent else Number(b.value / 100, True)
        if _numbers_equal(scaled, b if a.percent else a):
            return True
    if not (a.decimal or b.decimal):
        return a.value == b.value
    return round(a.value * 10**6) == round(b.value * 10**6)  # math-verify's float_rounding=6


def values_equal(gold: Value | None, answer: Value | None) -> bool:
    """Whether ``answer`` is ``gold``: exact for numbers (decimals to 6 places), else math-verify."""
    if gold is None or answer is None:
        return False
    if isinstance(gold, Many) or isinstance(answer, Many):
        return _lists_equal(gold, answer)
    if isinstance(gold, Number) and isinstance(answer, Number):
        return _numbers_equal(gold, answer)
    try:
        return bool(
            _math_verify().verify(_to_sympy(gold), _to_sympy(answer), timeout_seconds=None, strict=True)
        )
    except Exception:  # math-verify catches most of sympy's errors itself; anything left is "not equal"
        return False


def _lists_equal(gold: Value, answer: Value) -> bool:
    golds, answers = _elements(gold, answer), _elements(answer, gold)
    if len(golds) != len(answers):
        return False
    left = list(answers)
    for g in golds:  # order-free matching: "2, 3" answers "3, 2"
        hit = next((a for a in left if values_equal(g, a)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def _elements(value: Value, other: Value) -> tuple[Number | Symbolic, ...]:
    """A list's items; a LaTeX set or tuple's elements when compared with a list (``\\{2,3\\}`` vs ``2, 3``)."""
    if isinstance(value, Many):
        return value.items
    if isinstance(value, Symbolic) and isinstance(other, Many):
        import sympy

        if isinstance(value.expr, sympy.FiniteSet | sympy.Tuple):
            return tuple(Symbolic(e) for e in value.expr.args)
    return (value,)


def to_float(value: Value | None) -> float | None:
    """A single numeric value as a float (for tolerance checks); None for lists, symbols, non-finite."""
    if isinstance(value, Number):
        return float(value.value)
    if isinstance(value, Symbolic) and not getattr(value.expr, "free_symbols", True):
        try:
            result = complex(value.expr.evalf(30))
        except (TypeError, ValueError, OverflowError):
            return None
        return result.real if result.imag == 0 and abs(result.real) != float("inf") else None
    return None
