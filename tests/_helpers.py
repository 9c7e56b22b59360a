"""Small helpers shared by tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import re


def solve(messages):
    """The right answer to an Arithmetic-v0 prompt, parsed from our own prompt format."""
    a, op, b = re.fullmatch(r"(\d+)([+*-])(\d+)=", messages[0]["content"]).groups()
    return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
