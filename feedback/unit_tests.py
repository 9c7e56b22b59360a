"""Unit-test verification of Python solutions in a sandbox, with a harness that model code cannot fool.

One sandbox process per attempt runs a fixed harness program; the solution, the tests and a per-attempt nonce
arrive on stdin, so nothing the grader knows is in the program file. The harness reports one line
``<nonce> <json>`` per test on a private duplicate of stdout, and the grader outside the sandbox counts a test as
passed only when such a line says so (and, for input/output cases, when the returned value matches the expected
one under ``compare_strict``). Everything else, including tests that never reported, is a failure.

Assert-style tests run in the solution's process, so their operands must be built-in values (an object with its
own ``__eq__``/``__bool__`` fails) and they see unpatched builtins; a solution that deliberately walks the
harness's frames could still forge them, which is why ``cases`` tasks, judged outside the sandbox, are the
stronger form."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The program every graded run executes, kept as a real module so it is linted and readable; it is sent
# into the sandbox as source text.
HARNESS_PROGRAM = (Path(__file__).with_name("_harness.py")).read_text(encoding="utf-8")

_DEF_RE = r"^\s*(?:async\s+)?def\s+{name}\s*\("


@dataclass(frozen=True)
class Case:
    """One input/output check: ``entry_point(*input)`` must return ``output``."""

    input: list[Any]
    output: Any


@dataclass
class CodeTask:
    """A validated coding task in one of three forms: ``tests`` (MBPP asserts), ``cases`` or ``humaneval``."""

    id: str
    prompt: str
    kind: str
    tests: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    entry_point: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.cases) if self.kind == "cases" else len(self.tests)

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
            task.kind, task.tests = "humaneval", [f"{test}\n\ncheck({entry_point})\n"]
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


def new_nonce() -> str:
    """A fresh unguessable token that marks genuine harness report lines."""
    return secrets.token_hex(16)


def build_harness(
    solution: str, task: CodeTask | Mapping[str, Any], *, nonce: str | None = None, test_timeout: float = 3.0
) -> tuple[str, str]:
    """Return ``(program, stdin)`` for one graded run; stdin's first line is the nonce."""
    task = as_task(task)
    nonce = nonce or new_nonce()
    if not re.fullmatch(r"[0-9A-Za-z_-]{16,}", nonce):
        raise ValueError("nonce must be at least 16 URL-safe characters")
    payload: dict[str, Any] = {
        "solution": assemble_solution(solution, task),
        "kind": "cases" if task.kind == "cases" else "tests",
        "limit": float(test_timeout),
    }
    if task.kind == "cases":
        # only inputs go in: expected outputs never enter the sandbox
        payload["entry_point"] = task.entry_point
        payload["inputs"] = [list(c.input) for c in task.cases]
    else:
        payload["tests"] = list(task.tests)
    return HARNESS_PROGRAM, f"{nonce}\n{json.dumps(payload)}\n"


@dataclass
class TestOutcome:
    """One test as the harness reported it (``value_json`` is the returned value for cases)."""

    index: int
    ok: bool
    error: str = ""
    lineno: int | None = None
    value_json: str = ""
    timed_out: bool = False


@dataclass
class HarnessReport:
    """The genuine (nonce-marked) lines of one run's stdout."""

    outcomes: dict[int, TestOutcome] = field(default_factory=dict)
    load_error: str = ""
    load_phase: str = ""
    load_timed_out: bool = False
    finished: bool = False


def _unhex(text: Any) -> str:
    try:
        return bytes.fromhex(text).decode("utf-8", "replace") if isinstance(text, str) else ""
    except ValueError:
        return ""


def parse_report(stdout: str, nonce: str) -> HarnessReport:
    """Collect the lines that start with ``nonce``; anything else on stdout is ignored."""
    report = HarnessReport()
    prefix = nonce + " "
    seen: set[int] = set()
    for line in stdout.splitlines():
        if not nonce or not line.startswith(prefix):
            continue
        try:
            rec = json.loads(line[len(prefix) :])
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        kind = rec.get("k")
        if kind == "end":
            report.finished = True
        elif kind == "load":
            report.load_phase = str(rec.get("phase", ""))
            report.load_error = _unhex(rec.get("err")) or "the solution failed to load"
            report.load_timed_out = rec.get("to") is True
        elif kind == "test" and type(rec.get("i")) is int:
            index = rec["i"]
            lineno = rec.get("ln")
            outcome = TestOutcome(
                index=index,
                ok=rec.get("ok") is True,
                error=_unhex(rec.get("err")),
                lineno=int(lineno) if isinstance(lineno, str) and lineno.isdigit() else None,
                value_json=_unhex(rec.get("val")),
                timed_out=rec.get("to") is True,
            )
            if index in seen:  # only a forked copy of the harness reports twice: trust neither
                outcome = TestOutcome(index=index, ok=False, error="test reported twice (process forked)")
            seen.add(index)
            report.outcomes[index] = outcome
    return report


def compare_strict(a: Any, b: Any) -> bool:
    """Equal in type and value, recursively: ``True`` is not ``1``, ``1`` is not ``1.0``, list is not dict.

    Floats match within a relative 1e-9 (summation order should not fail a correct answer); NaN matches NaN.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(compare_strict(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(compare_strict(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass
class TestDetail:
    """The verdict on one test, with what a self-debugging model needs to fix it."""

    index: int
    passed: bool
    source: str
    error: str = ""
    line: str = ""
    timed_out: bool = False


@dataclass
class VerifyResult:
    """How one solution fared: counts, per-test details and the sandbox status."""

    passed: int
    total: int
    details: list[TestDetail]
    first_failure: TestDetail | None
    status: str
    syntax_error: bool = False
    timed_out: bool = False
    load_error: str = ""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def feedback(self, limit: int = 1500) -> str:
        """A short report of the first failure, trimmed to about ``limit`` characters."""
        if self.all_passed:
            return "All tests passed."
        fail = self.first_failure
        if self.syntax_error:
            text = f"Your code does not compile:\n{self.load_error}"
        elif self.load_error:
            text = f"Your code raised an error while loading, before any test ran:\n{self.load_error}"
        elif fail is None:
            text = f"{self.passed}/{self.total} tests passed."
        else:
            text = f"{self.passed}/{self.total} tests passed. Failing test:\n{fail.source}"
            if fail.line.strip() and fail.line.strip() != fail.source:
                text += f"\n(failed at: {fail.line.strip()})"
            text += f"\nError: {fail.error}" if fail.error else ""
        return text if len(text) <= limit else text[: limit - 3] + "..."


_STATUS_REASON = {
    "timeout": "the run hit its overall time limit",
    "memory": "the run ran out of memory",
    "output_limit": "the run printed too much output",
    "sandbox_error": "the sandbox failed",
}


def _describe_test(task: CodeTask, index: int) -> str:
    if task.kind == "cases":
        args = ", ".join(repr(a) for a in task.cases[index].input)
        return f"{task.entry_point}({args}) == {task.cases[index].output!r}"
    if task.kind == "humaneval":
        return f"check({task.entry_point})"
    lines = [ln for ln in task.tests[index].splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def grade(task: CodeTask, report: HarnessReport, status: str) -> VerifyResult:
    """Turn a parsed report into a verdict; a test without a genuine passing line fails."""
    details: list[TestDetail] = []
    for i in range(task.total):
        source = _describe_test(task, i)
        outcome = report.outcomes.get(i)
        if outcome is None:
            if report.load_phase:
                why = f"the solution failed to load: {report.load_error}"
            else:
                why = f"the test did not run: {_STATUS_REASON.get(status, 'the process ended early')}"
            details.append(TestDetail(i, False, source, why, timed_out=status == "timeout"))
            continue
        line = ""
        if outcome.lineno and task.kind != "cases":
            src_lines = task.tests[i].splitlines()
            line = src_lines[outcome.lineno - 1] if outcome.lineno <= len(src_lines) else ""
        passed, error = outcome.ok, outcome.error
        if passed and task.kind == "cases":
            passed, error = _check_value(outcome.value_json, task.cases[i].output)
        details.append(TestDetail(i, passed, source, error, line, outcome.timed_out))
    failures = [d for d in details if not d.passed]
    return VerifyResult(
        passed=len(details) - len(failures),
        total=len(details),
        details=details,
        first_failure=failures[0] if failures else None,
        status=status,
        syntax_error=report.load_phase == "compile",
        timed_out=report.load_timed_out or any(d.timed_out for d in details),
        load_error=report.load_error if report.load_phase else "",
    )


def _check_value(value_json: str, expected: Any) -> tuple[bool, str]:
    try:
        got = json.loads(value_json)
    except (ValueError, RecursionError):
        return False, "the returned value could not be read back"
    if compare_strict(got, expected):
        return True, ""
    return False, f"expected {expected!r} ({type(expected).__name__}), got {got!r} ({type(got).__name__})"


class UnitTestVerifier:
    """Grade solutions in a sandbox (anything with ``run``/``arun`` like ``aligngym.sandboxes``)."""

    def __init__(self, sandbox: Any, timeout: float | None = 10.0, test_timeout: float | None = None):
        self.sandbox = sandbox
        self.timeout = timeout
        # a per-test limit well under the run's limit, so one endless test leaves time for the others
        self.test_timeout = test_timeout or round(max(0.5, min(3.0, (timeout or 10.0) / 3)), 2)

    def _prepare(self, solution: str, task: CodeTask | Mapping[str, Any]) -> tuple[CodeTask, str, str, str]:
        task = as_task(task)
        nonce = new_nonce()
        program, stdin = build_harness(solution, task, nonce=nonce, test_timeout=self.test_timeout)
        return task, nonce, program, stdin

    def verify(self, solution: str, task: CodeTask | Mapping[str, Any]) -> VerifyResult:
        """Run the solution against the task's tests in one sandbox process."""
        task, nonce, program, stdin = self._prepare(solution, task)
        result = self.sandbox.run(program, language="python", stdin=stdin, timeout=self.timeout)
        return grade(task, parse_report(result.stdout or "", nonce), result.status)

    async def averify(self, solution: str, task: CodeTask | Mapping[str, Any]) -> VerifyResult:
        """Async ``verify``: awaits the sandbox so many verifications share one event loop."""
        task, nonce, program, stdin = self._prepare(solution, task)
        result = await self.sandbox.arun(program, language="python", stdin=stdin, timeout=self.timeout)
        return grade(task, parse_report(result.stdout or "", nonce), result.status)
