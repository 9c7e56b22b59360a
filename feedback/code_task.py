"""Coding tasks in three forms (MBPP ``tests``, input/output ``cases``, HumanEval rows), validated on load."""

from __future__ import annotations

import ast
import base64
import functools
import marshal
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._testcode import free_names, graded_assert_nodes, graded_asserts, instrument

_DEF_RE = r"^\s*(?:async\s+)?def\s+{name}\s*\("


@dataclass(frozen=True)
class Case:
    """One input/output check: ``entry_point(*input)`` must return ``output``."""

    input: list[Any]
    output: Any


@dataclass
class CodeTask:
    """A validated coding task in one of three forms: ``tests`` (MBPP asserts), ``cases`` or ``humaneval``.

    For ``humaneval`` rows ``tests`` holds the one ``check`` source and every graded assert in it (not a
    constant ``assert True``) is a test of its own, so a half-right function earns half the reward.
    """

    id: str
    prompt: str
    kind: str
    tests: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    entry_point: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def graded(self) -> list[tuple[int, str]]:
        """HumanEval: (line, source) of each graded assert of ``check``; other forms: none."""
        return graded_asserts(self.tests[0]) if self.kind == "humaneval" else []

    @functools.cached_property
    def names(self) -> list[str]:
        """The solution's names the tests use; each call to one crosses to the solution's process."""
        if self.kind in ("cases", "humaneval"):
            return [self.entry_point] if self.entry_point else []
        return free_names(self.tests)

    @functools.cached_property
    def redacted(self) -> list[str]:
        """Per test, its source with every literal outside the solution's call arguments shown as ``…``:
        what self-debug feedback may show without handing out the expected values (``tests``, ``humaneval``)."""
        names = set(self.names) | {"candidate"}
        if self.kind == "humaneval":
            nodes = graded_assert_nodes(self.tests[0])
            return [_redact(node, names) for node in nodes] or [f"check({self.entry_point})"]
        return [_redact(ast.parse(source), names) for source in self.tests]

    @functools.cached_property
    def compiled(self) -> str:
        """The tests' instrumented code, marshalled and base64'd: a tester with our bytecode format loads it
        instead of compiling every test in every grade."""
        graded = self.kind == "humaneval" and bool(self.graded)
        return base64.b64encode(marshal.dumps([instrument(t, graded=graded) for t in self.tests])).decode()

    @property
    def total(self) -> int:
        if self.kind == "cases":
            return len(self.cases)
        if self.kind == "humaneval":
            return max(1, len(self.graded))  # a check without graded asserts is one test: it runs through
        return len(self.tests)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], index: int | None = None) -> CodeTask:
        """Validate a task row (dict) and build the task; a malformed row raises ``ValueError``."""
        where = f"row {index}" if index is not None else "row"
        if not isinstance(row, Mapping):
            raise ValueError(f"code task {where}: expected a JSON object, got {type(row).__name__}")
        task_id = row.get("id", row.get("task_id"))
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or task_id == "":
            raise ValueError(f"code task {where}: missing 'id' (or HumanEval 'task_id')")
        name = f"code task {str(task_id)!r}"
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{name}: missing 'prompt' (a non-empty string)")
        entry_point = row.get("entry_point")
        if entry_point is not None and not (isinstance(entry_point, str) and entry_point.isidentifier()):
            raise ValueError(f"{name}: 'entry_point' must be a Python identifier, got {entry_point!r}")
        known = {"id", "task_id", "prompt", "entry_point", "tests", "cases", "test"}
        extra = {k: v for k, v in row.items() if k not in known}
        task = cls(id=str(task_id), prompt=prompt, kind="", entry_point=entry_point, extra=extra)
        if "cases" in row:
            task.kind, task.cases = "cases", _validate_cases(name, row["cases"], entry_point)
        elif "test" in row:
            test = row["test"]
            if entry_point is None:
                raise ValueError(f"{name}: HumanEval rows need 'entry_point'")
            if not isinstance(test, str) or "def check" not in test:
                raise ValueError(f"{name}: HumanEval 'test' must be source defining check(candidate)")
            task.kind, task.tests = "humaneval", [test]
        elif "tests" in row:
            tests = row["tests"]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError(f"{name}: 'tests' must be a non-empty list of Python source strings")
            task.kind, task.tests = "tests", list(tests)
        else:
            raise ValueError(f"{name}: missing 'tests', or 'cases' with 'entry_point', or HumanEval 'test'")
        for i, source in enumerate(task.tests):
            try:
                compile(source, f"<test {i}>", "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                raise ValueError(f"{name}: test {i} is not valid Python: {exc}") from None
        return task


class _Redactor(ast.NodeTransformer):
    def __init__(self, names: set[str]):
        self.names = names

    def visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.names:
            return node  # the inputs the solution was given are not secret
        if isinstance(node, ast.expr) and not isinstance(node, ast.Name):
            try:
                ast.literal_eval(node)
                return ast.copy_location(ast.Name("…", ast.Load()), node)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
        return super().visit(node)


def _redact(node: ast.AST, names: set[str]) -> str:
    """``node`` as source with the literals a test compares against replaced by ``…``."""
    return ast.unparse(_Redactor(names).visit(node)).strip()


def _validate_cases(name: str, cases: Any, entry_point: str | None) -> list[Case]:
    if entry_point is None:
        raise ValueError(f"{name}: 'cases' rows need 'entry_point' (the function to call)")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{name}: 'cases' must be a non-empty list")
    out = []
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or "input" not in case or "output" not in case:
            raise ValueError(f"{name}: case {i} needs 'input' and 'output'")
        if not isinstance(case["input"], list):
            raise ValueError(f"{name}: case {i} 'input' must be a list of arguments")
        out.append(Case(input=case["input"], output=case["output"]))
    return out


def as_task(task: CodeTask | Mapping[str, Any]) -> CodeTask:
    """Accept a ``CodeTask`` or a raw row."""
    return task if isinstance(task, CodeTask) else CodeTask.from_row(task)


def assemble_solution(solution: str, task: CodeTask) -> str:
    """The program to load: HumanEval answers may be a body to append to the prompt or a whole function."""
    if task.kind != "humaneval" or task.entry_point is None:
        return solution
    match = re.search(_DEF_RE.format(name=re.escape(task.entry_point)), task.prompt, re.M)
    if re.search(_DEF_RE.format(name=re.escape(task.entry_point)), solution, re.M):
        # keep the prompt's imports and helpers, which a rewritten function usually relies on
        header = task.prompt[: match.start()] if match else ""
        return f"{header}\n{solution}" if header.strip() else solution
    return task.prompt + solution
