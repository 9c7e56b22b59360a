"""Reading the maths items of a final statement: ``The sum is 4.``, ``x = 2 or x = 3``, ``$\\frac{1}{2}$``.

A statement is split into *items* (LaTeX spans and runs of plain maths) and the words between them. The
answer is the last item, or the last items joined by list words (``2, 3 and 5``: a list, which only a list
gold equals). A negation or comparison just before it (``not 4``, ``more than 4``) or an open-ended tail
(``4 or more``) means no answer. Exactly one value (or one list) per statement is ever compared to a gold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._math_values import MAX_ITEMS, Many, Value, latex_value, plain_number, word_set

_TOKEN = re.compile(
    r"(?P<latex>\$\$(?P<dd>[^$]{1,600}?)\$\$|\$(?P<d>[^$\n]{1,600}?)\$"
    r"|\\\((?P<p>.{1,600}?)\\\)|\\\[(?P<b>.{1,600}?)\\\])"
    r"|(?P<unit>\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{[^{}\n]{0,60}\})"
    r"|(?P<cmd>\\[A-Za-z]+|\\[^A-Za-z\s])"
    r"|(?P<num>[0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<op>\*\*|[-+*/^_=<>!%|])"
    r"|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<comma>,)|(?P<space>\s+)|(?P<other>.)",
    re.DOTALL,
)
# Plain-text spellings latex2sympy knows only with a backslash.
_MATH_WORDS = word_set("sqrt pi sin cos tan log ln exp")
# LaTeX commands that join two operands (so spaces around them stay inside one run).
_INFIX_COMMANDS = word_set(r"\cdot \times \div \pm \mp \le \leq \ge \geq \lt \gt \ne \neq \in \cup \cap")
_PREFIX_COMMANDS = word_set(r"\frac \dfrac \tfrac \sqrt \binom \dbinom \tbinom \log \ln \sin \cos \tan")
_RELATIONS = re.compile(r"^\s*(?:=|<|>|\\le|\\ge|\\lt|\\gt|\\ne|\\leq|\\geq|\\neq|\\approx)")
# Words that make two neighbouring items one list: "2, 3", "3 or 4", "either 2 or maybe 3".
_LIST_WORDS = word_set("or and nor either maybe perhaps possibly also plus vs versus else otherwise")
# Words just before the answer that deny or bound it instead of stating it.
CUES = word_set(
    "not isn't isnt aren't arent wasn't wasnt never cannot can't cant neither nor except excluding "
    "than least most over under above below exceed exceeds exceeding beyond unlike besides almost "
    "nearly"
)
_TAILS = (("or",), ("nor",), ("plus",), ("give",), ("and", "up"), ("and", "above"), ("and", "over"),
          ("and", "more"), ("and", "below"), ("at", "least"), ("at", "most"))  # fmt: skip
_WORDS = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class Item:
    """A maths item of a statement: its span and text, and whether it came from LaTeX delimiters."""

    start: int
    end: int
    text: str
    latex: bool


def items(statement: str) -> list[Item]:
    """The maths items of ``statement``, in order."""
    tokens = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(statement)]
    found: list[Item] = []
    run: list[tuple[str, str, int, int]] = []
    depth = 0
    for i, (kind, text, start, end) in enumerate(tokens):
        if kind == "latex":
            _flush(run, statement, found)
            run = []
            match = _TOKEN.match(statement, start)
            inner = next(
                g for g in (match.group("dd"), match.group("d"), match.group("p"), match.group("b")) if g
            )
            found.append(Item(start, end, inner.strip(), True))
            continue
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(0, depth - 1)
        if _is_math(tokens, i, depth) or kind == "space" and run and _space_joins(tokens, i, depth):
            run.append((kind, text, start, end))
        else:
            _flush(run, statement, found)
            run = []
    _flush(run, statement, found)
    return found


def _is_math(tokens: list, i: int, depth: int) -> bool:
    kind, text = tokens[i][0], tokens[i][1]
    if kind in ("num", "cmd", "op", "open", "close"):
        return True
    if kind == "unit":
        return False
    if kind == "comma":
        return depth > 0
    if kind == "word":
        if text.lower() in _MATH_WORDS:
            return True
        return len(text) == 1 and (depth > 0 or _letter_touches_math(tokens, i))
    return False


def _letter_touches_math(tokens: list, i: int) -> bool:
    """A lone letter is a variable next to an operator (``x = 4``) or glued to a number (``2x``)."""
    for step in (-1, 1):
        j = i + step
        if 0 <= j < len(tokens) and tokens[j][0] in ("num", "open", "close", "op"):
            return True
        while 0 <= j < len(tokens) and tokens[j][0] == "space":
            j += step
        if 0 <= j < len(tokens) and tokens[j][0] == "op" and tokens[j][1] not in "%!":
            return True
    return False


def _operand(token: tuple[str, str, int, int]) -> bool:
    kind, text = token[0], token[1]
    if kind == "cmd":
        return text not in _INFIX_COMMANDS and text not in _PREFIX_COMMANDS
    return kind in ("num", "word", "close")


def _space_joins(tokens: list, i: int, depth: int) -> bool:
    """Spaces stay inside a run unless they separate two operands (``4 5`` is two items, ``4 + 5`` one)."""
    after = i + 1
    if after >= len(tokens) or not _is_math(tokens, after, depth):
        return False
    before = i - 1
    return depth > 0 or not (_operand(tokens[before]) and _operand(tokens[after]))


def _flush(run: list, statement: str, found: list[Item]) -> None:
    """Close a run: drop dangling operators and brackets; keep it if it holds a number, command or formula."""
    while run and (run[-1][0] in ("space", "open") or run[-1][1] in ("=", "+", "-", "*", "/", "^")):
        run.pop()
    kinds = {k for k, *_ in run}
    if not ({"num", "cmd"} & kinds or {"word", "op"} <= kinds):  # "(a)" and "x" alone are not answers
        return
    start, end = run[0][2], run[-1][3]
    found.append(Item(start, end, statement[start:end], False))


def lower_words(text: str) -> list[str]:
    """The lower-case words of ``text`` (apostrophes kept: ``isn't``)."""
    return _WORDS.findall(text.lower().replace("\u2019", "'"))


def is_list_join(between: str) -> bool:
    """Whether the text between two items only lists them (``, ``, `` or ``, ``and maybe``)."""
    # LaTeX wrappers do not change what joins two items: "3 \\text{ or } 4" is "3 or 4".
    plain = re.sub(r"\\[A-Za-z]+|[{}$]", " ", between.lower())
    words = re.sub(r"[\s,;/&()\[\]]+", " ", plain).split()
    return all(w in _LIST_WORDS for w in words)


def _rhs(text: str) -> str:
    """What follows the last top-level ``=`` (``x = 12 + 3 = 15`` -> ``15``); the text if there is none."""
    depth, cut = 0, -1
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif (
            ch == "=" and depth == 0 and (i == 0 or text[i - 1] not in "<>!=") and text[i + 1 : i + 2] != "="
        ):
            cut = i
    return text[cut + 1 :].strip() if cut >= 0 else text.strip()


def _latex_text(item: Item) -> str:
    """An item as LaTeX for latex2sympy: ``**`` as ``^``, ``sqrt``/``pi``/... with their backslash."""
    if item.latex:
        return item.text
    text = item.text.replace("**", "^")
    return re.sub(r"(?<![\\A-Za-z])(" + "|".join(_MATH_WORDS) + r")(?![A-Za-z])", r"\\\1", text)


def item_value(item: Item) -> Value | None:
    """The value of one item: a plain number exactly, else through math-verify; None if neither."""
    text = _latex_text(item)
    right = _rhs(text)
    if not right:
        return None
    number = plain_number(right)
    if number is not None:
        return number
    if re.search(r"<|>|\\[lg]e|\\[lg]t|\\ne|\\in\b|\\approx", text):
        return latex_value(text)  # a relation: math-verify compares it whole
    return latex_value(right)


def statement_value(statement: str) -> Value | None:
    """The one value (or list) ``statement`` states, or None (nothing, several kinds, denied, unreadable)."""
    if any(ch.isdigit() and not ch.isascii() for ch in statement):
        return None  # other scripts' digits: never guessed at
    if _is_pure_maths(statement):
        return _pure_value(statement)
    found = items(statement)
    # "$x$ = 4": an item that starts with a relation continues the item before it.
    merged: list[Item] = []
    for item in found:
        if (
            merged
            and not item.latex
            and _RELATIONS.match(item.text)
            and not statement[merged[-1].end : item.start].strip()
        ):
            merged[-1] = Item(merged[-1].start, item.end, merged[-1].text + " " + item.text, False)
        else:
            merged.append(item)
    if not merged:
        return None
    group = [merged[-1]]
    for earlier in reversed(merged[:-1]):
        if not is_list_join(statement[earlier.end : group[0].start]):
            break
        group.insert(0, earlier)
    before = statement[merged[-len(group) - 1].end if len(merged) > len(group) else 0 : group[0].start]
    clause = re.split(r"[,;:.!?]", before)[-1]  # "no, it is 4" denies nothing about 4
    if CUES & set(lower_words(clause)[-4:]) or _open_tail(statement[group[-1].end :]):
        return None
    if len(group) > MAX_ITEMS:
        return None
    values = [item_value(item) for item in group]
    if any(v is None for v in values):
        return None
    return values[0] if len(values) == 1 else Many(tuple(values))  # type: ignore[arg-type]


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+")
_PROSE = re.compile(r"[A-Za-z]{2,}")


def _is_pure_maths(statement: str) -> bool:
    """Maths with no prose around it (``5,050``, ``\\frac{1}{2}``, ``x = 2, y = 3``, boxed contents)."""
    if "$" in statement:
        return False
    words = _PROSE.findall(_TEXT_COMMAND.sub(" ", statement))
    return all(w.lower() in _MATH_WORDS for w in words)


def _pure_value(statement: str) -> Value | None:
    """Pure maths is read whole: one value (``x = 12 + 3 = 15``), or a list/set that math-verify parses."""
    if not re.search(r"[,;]", statement):
        return item_value(Item(0, len(statement), statement, False))
    number = plain_number(statement)  # 5,050
    return (
        number if number is not None else latex_value(_latex_text(Item(0, len(statement), statement, False)))
    )


def _open_tail(after: str) -> bool:
    """Whether the words right after the answer leave it open (``or more``, ``and up``, ``plus``)."""
    words = lower_words(re.split(r"[.!?;\n]", after, maxsplit=1)[0])
    return any(tuple(words[: len(tail)]) == tail for tail in _TAILS)
