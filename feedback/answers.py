"""Final-answer extraction and comparison: the one place every env and feedback grades a final answer.

``extract_answer`` finds the final statement of a response: the last ``\\boxed{}`` group, the text after the
last ``Answer:`` / ``the answer is`` marker, or else the last sentence that holds any maths. Whichever of a
boxed group and a marker comes last wins. ``statement_value`` reads one value (or one list) out of it, and
``values_equal`` compares values: exactly for plain numbers, through HF's math-verify for everything else.
See docs/grading.md ("Final-answer extraction") for the rules, the threat model and what math-verify does.
Code answers are read here too (``extract_code``: the last python block), and votes over answers taken
(``majority``).
"""

from __future__ import annotations

import math
import operator
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache

from ._math_values import Many, Number, Value, plain_number, to_float, values_equal, word_set
from ._statements import CUES, is_list_join, lower_words, statement_value

__all__ = [
    "Many",
    "Number",
    "Value",
    "answers_agree",
    "clean",
    "extract_answer",
    "extract_code",
    "fenced_blocks",
    "final_value",
    "gold_value",
    "is_number",
    "majority",
    "math_equal",
    "normalize",
    "numbers_close",
    "parse_choice",
    "parse_number",
    "parse_short",
    "text_agree",
    "values_equal",
]

#: Only the tail of a response is read: a final answer is at the end, and reading is then O(1) per call.
MAX_TEXT = 16_000
#: A final statement longer than this states no single answer.
MAX_STATEMENT = 600

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_HAS_MATHS = re.compile(r"[0-9]|\\[A-Za-z]")
_DASHES = dict.fromkeys(
    [ord(c) for c in "\u2212\u2010\u2011\u2012\u2013\u2014\u2015\ufe58\ufe63\uff0d\u207b\u208b"], "-"
)
_SYMBOLS = {"×": r"\times ", "÷": "/", "·": r"\cdot ", "π": r"\pi ", "√": r"\sqrt", "∞": r"\infty ",
            "±": r"\pm ", "∓": r"\mp ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne "}  # fmt: skip
_SYMBOL_RE = re.compile("|".join(map(re.escape, _SYMBOLS)) + r"|\+\s*/\s*-|\+-|-\+")
# Markdown emphasis (**4**, *4*, __4__): a run of * or _ with whitespace or an edge on exactly one side.
_EMPHASIS = re.compile(r"\*{1,3}|_{2,3}")
_OPEN_SIDE, _CLOSE_SIDE = " \t\n([", " \t\n.,;:!?)]"


def _unemphasise(match: re.Match) -> str:
    text, start, end = match.string, match.start(), match.end()
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    opens = before in _OPEN_SIDE and after not in _OPEN_SIDE
    closes = before not in _OPEN_SIDE and after in _CLOSE_SIDE
    return "" if opens or closes else match.group()


# A $ that starts an amount ($18, $5.50) rather than LaTeX ($18$): the next $ on the line is missing,
# opens another amount ($2 = $18), or prose lies between ($5 and $6).
_CURRENCY = re.compile(
    r"\\\$|\$(?=[0-9])(?:(?![^$\n]*\$)|(?=[^$\n]*\$[0-9])|(?=[0-9][^$\n]*\s[A-Za-z]{2,}\s[^$\n]*\$))"
)
_MARKER = re.compile(
    r"\banswers?\b[\s*:]*(?:is|was|would\s+be|will\s+be|should\s+be|:|=)(?![A-Za-z])[\s*:]*"
    r"(?![\s*:]*(?:correct|incorrect|right|wrong|reasonable|consistent|valid|clear|above|below|as\s+follows|"
    r"indeed|confirmed|verified|not\s+(?:correct|right|wrong|valid))\b)",
    re.IGNORECASE,
)
# A "Final Answer" heading line, or GSM8K's "#### 18".
_HEADER = re.compile(r"^[#*\s]*final\s+answer[*:\s]*$|^####(?=\s*\S)", re.IGNORECASE | re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_LATEX_SPAN = re.compile(r"\$\$[^$]*\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces: the usual exact-match normalisation."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _visible(match: re.Match) -> str:
    # Format characters (zero-width space, joiners, bidi overrides) are invisible: drop them.
    return "" if unicodedata.category(match.group()) == "Cf" else match.group()


def clean(text: str) -> str:
    """The tail of ``text`` with invisible characters dropped, dashes as ``-``, symbols as LaTeX, no markdown."""
    text = _NON_ASCII.sub(_visible, text[-MAX_TEXT:]).translate(_DASHES)
    text = _SYMBOL_RE.sub(lambda m: _SYMBOLS.get(m.group(), r"\pm "), text)
    if "*" in text or "__" in text:  # the membership tests are C-speed; the regexes are not
        text = _EMPHASIS.sub(_unemphasise, text)
    return _CURRENCY.sub("", text) if "$" in text else text


def _boxed_contents(text: str, start: int) -> tuple[str, int] | None:
    """The balanced ``{...}`` body opened just before ``start``, and where it ends."""
    depth = 1
    for i in range(start, min(len(text), start + MAX_STATEMENT)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i], i + 1
    return None


def _sentence(text: str, start: int) -> str:
    """From ``start`` to the end of its sentence (a ``.``/``!``/``?`` outside LaTeX, or the line's end)."""
    line_end = text.find("\n", start)
    line = text[start : len(text) if line_end < 0 else line_end]
    spans = [m.span() for m in _LATEX_SPAN.finditer(line)]
    for match in _SENTENCE_END.finditer(line):
        if not any(a <= match.start() < b for a, b in spans):
            return line[: match.start()]
    return line


def _boxed_statement(text: str) -> tuple[int, str] | None:
    """The last line's boxed contents (distinct ones joined as a list), with a denial just before kept."""
    found = []
    for match in _BOXED.finditer(text):
        body = _boxed_contents(text, match.end())
        if body is not None:
            found.append((match.start(), body[0].strip()))
    if not found:
        return None
    last_start = found[-1][0]
    line_start = text.rfind("\n", 0, last_start) + 1
    group = [(s, b) for s, b in found if s >= line_start]
    contents = list(dict.fromkeys(b for _, b in group))
    prefix = text[line_start : group[0][0]]
    cue = " ".join(w for w in lower_words(prefix)[-4:] if w in CUES)
    joined = contents[0] if len(contents) == 1 else " , ".join(f"${c}$" for c in contents)
    return last_start, f"{cue} {joined}".strip()


def _marker_statement(text: str) -> tuple[int, str] | None:
    """The statement after the last answer marker (``Answer:``, ``the answer is``, a "Final Answer" header)."""
    best: tuple[int, int] | None = None
    for match in _MARKER.finditer(text):
        best = (match.start(), match.end())
    for match in _HEADER.finditer(text):
        if best is None or match.start() > best[0]:
            best = (match.start(), match.end())
    if best is None:
        return None
    rest = text[best[1] :]
    skipped = len(rest) - len(rest.lstrip())
    return best[0], _sentence(text, best[1] + skipped).strip()


def _last_sentence_with_maths(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        spans = [m.span() for m in _LATEX_SPAN.finditer(line)]
        cuts = [0] + [
            m.end() for m in _SENTENCE_END.finditer(line) if not any(a <= m.start() < b for a, b in spans)
        ]
        for cut in reversed(cuts):
            sentence = _sentence(line, cut).strip()
            if _HAS_MATHS.search(sentence):
                return sentence
    return lines[-1].strip() if lines else ""


def extract_answer(text: str) -> str:
    """The final statement of a response (boxed contents, the text after the last marker, or the last line).

    Several different ``\\boxed{}`` answers on the final line come back as a list (``$3$ , $4$``).
    """
    text = clean(text or "")
    candidates = sorted(
        c for c in (_boxed_statement(text), _marker_statement(text)) if c is not None and c[1]
    )
    if candidates:
        # The later one wins, unless it states no maths at all ("\boxed{4}. The answer should be simplified.").
        with_maths = [c for c in candidates if _HAS_MATHS.search(c[1])]
        return (with_maths or candidates)[-1][1][:MAX_STATEMENT]
    return _last_sentence_with_maths(text)[:MAX_STATEMENT]


@lru_cache(maxsize=8192)
def _statement_value(statement: str) -> Value | None:
    return statement_value(statement) if len(statement) <= MAX_STATEMENT else None


def final_value(text: str) -> Value | None:
    """The one value (or list) a response commits to as its final answer; None if it commits to none."""
    return _statement_value(extract_answer(text))


def gold_value(gold: str) -> Value | None:
    """The value of a gold answer (``5050``, ``1/2``, ``\\frac{\\sqrt 3}{2}``, ``2, 3``)."""
    return _statement_value(clean(str(gold)).strip())


def answers_agree(a: str, b: str) -> bool:
    """Whether two extracted answers say the same: equal values as maths, or (no maths in either) as text."""
    va, vb = gold_value(a or ""), gold_value(b or "")
    if va is not None or vb is not None:
        return values_equal(va, vb)
    na, nb = normalize(a or ""), normalize(b or "")
    return bool(na) and na == nb


def math_equal(a: str, b: str) -> bool:
    """Whether two maths expressions are equal (``1/2`` and ``0.5``); unsafe or unparseable -> False."""
    return values_equal(gold_value(a), gold_value(b))


def numbers_close(gold: str, answer: Value | None, tolerance: float) -> bool:
    """Whether a single numeric ``answer`` is within ``tolerance`` (relative and absolute) of ``gold``."""
    want, got = to_float(gold_value(gold)), to_float(answer)
    return (
        want is not None and got is not None and math.isclose(got, want, rel_tol=tolerance, abs_tol=tolerance)
    )


def is_number(text: str) -> bool:
    """Whether a gold answer is one plain number (then answers are compared as numbers)."""
    return plain_number(clean(str(text)).strip()) is not None


def parse_number(text: str) -> str | None:
    """The final answer of ``text`` as canonical number text (``5,050`` -> ``5050``), or None if it is not one."""
    value = final_value(text)
    return value.text() if isinstance(value, Number) else None


_LETTER_PAREN = re.compile(r"\(([A-Da-d])\)")
_LETTER_SAID = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Da-d])\b", re.IGNORECASE)


def parse_choice(text: str) -> str | None:
    """The multiple-choice letter an answer commits to: the last ``(X)``, else ``answer is X``, else a lone letter.

    ``(A) or (B)`` commits to none: two different letters joined only by list words are a hedge.
    """
    text = clean(text or "")
    found = list(_LETTER_PAREN.finditer(text))
    if found:
        last = found[-1]
        if len(found) > 1:
            prev = found[-2]
            if prev.group(1).upper() != last.group(1).upper() and is_list_join(
                text[prev.end() : last.start()]
            ):
                return None
        return last.group(1).upper()
    said = _LETTER_SAID.findall(text)
    if said:
        return said[-1].upper()
    stripped = text.strip().strip(".").strip()
    return stripped.upper() if len(stripped) == 1 and stripped.upper() in "ABCD" else None


def parse_short(text: str) -> str:
    """A short free-text answer, normalised: what follows the last answer marker, else the last line."""
    text = clean(text or "")
    marked = _marker_statement(text)
    if marked is not None and marked[1]:
        return normalize(marked[1])
    lines = [line for line in text.splitlines() if line.strip()]
    return normalize(lines[-1]) if lines else ""


#: Words an answer may add around the gold phrase ("It is Paris.") without stating anything else.
_FILLER = word_set(
    "it is its it's was be would will i think believe so thus therefore hence final answer my this "
    "that correct one called named"
)


def text_agree(answer: str, golds: list[str] | tuple[str, ...]) -> bool:
    """Whether a normalised answer states one of ``golds``: equal, or the gold phrase plus filler words only.

    Any other word beside the gold phrase (``Paris London``, ``Paris or Lyon``) fails: a list of guesses
    never contains the gold "by accident".
    """
    said = normalize(answer)
    if not said:
        return False
    for gold in golds:
        want = normalize(gold)
        if not want:
            continue
        if said == want:
            return True
        padded = f" {said} "
        if f" {want} " in padded:
            rest = padded.replace(f" {want} ", " ", 1).split()
            if all(w in _FILLER for w in rest):
                return True
    return False


def majority(answers: Sequence[str | None], agree: Callable[[str, str], bool] | None = None) -> str | None:
    """The answer most of ``answers`` agree with (``agree``, else equal text); empty answers do not vote.

    Ties go to the answer given first, so the vote depends on neither seeds nor dict order; ``agree`` may be
    looser than equality (``answers_agree``: equal as maths without being equal as text).
    """
    given = [a for a in answers if a]
    same = agree or operator.eq
    best, best_count = None, 0
    for answer in given:
        count = sum(bool(same(answer, other)) for other in given)
        if count > best_count:
            best, best_count = answer, count
    return best


def fenced_blocks(text: str, languages: set[str] | frozenset[str]) -> list[str]:
    """Bodies of the fenced code blocks whose language is in ``languages`` (``""`` = a bare fence), in order.

    Fences are read line by line, so another language's closing fence never opens a block; a final block
    left unclosed (a reply cut off by the length limit) still counts.
    """
    blocks: list[str] = []
    lang: str | None = None  # the open block's language, None outside a block
    body: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if lang is None and stripped.startswith("```"):
            lang, body = stripped[3:].strip().lower(), []
        elif lang is not None and stripped == "```":
            if lang in languages:
                blocks.append("\n".join(body))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang in languages and body:
        blocks.append("\n".join(body))
    return blocks


_PY_LANGS = frozenset({"", "python", "python3", "py"})


def extract_code(text: str) -> str:
    """The last ```python / ```py / bare ``` block of ``text``; the whole text when there is none.

    Fences are read line by line, so a ```bash block's closing fence never opens a python block; a final
    python block left unclosed (a cut-off answer) still counts.
    """
    blocks = fenced_blocks(text, _PY_LANGS)
    return blocks[-1] + "\n" if blocks else text
