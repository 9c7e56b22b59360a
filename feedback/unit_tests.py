"""Unit-test verification of Python solutions in a sandbox: a split grader that model code cannot fool.

One sandbox run per attempt executes ``_harness.py`` isolated (``python -I``). Its main process, the trusted
*tester*, forks the *candidate* before it reads anything secret, then reads the nonce and the tests from stdin
and runs the tests itself; every call a test makes to the solution crosses a pipe to the candidate as plain
data (see ``aligngym.feedback._harness``), so nothing the solution defines, patches or returns as an object
is ever visible to a test, and no expected value enters the solution's process. The tester reports one
``<nonce> <json>`` line per test; the grader outside the sandbox counts a test as passed only when such a line
says so (and, for input/output cases, when the returned value matches the expected one under
``compare_strict``; expected outputs never enter the sandbox). Everything else, including tests that never
reported, is a failure. Threat model and guarantees: docs/grading.md.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import marshal
import math
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngym.sandboxes.forkserver import trust_prelude

from .answers import extract_code
from .base import FeedbackResult, Message
from .code_task import Case, CodeTask, as_task, assemble_solution

__all__ = ["Case", "CodeTask", "UnitTestVerifier", "VerifyResult", "build_harness", "grade", "parse_report"]

# The grading program's modules, in import order; ``_harness.main`` runs the grade (see ``_program``).
_HARNESS_MODULES = ("_wire", "_testcode", "_candidate", "_remote", "_harness")
_HARNESS_MAIN = "sys.modules['aligngym.feedback._harness'].main()\n"


def _prelude(folder: Path) -> str:
    """The grading program but its last line: it registers the harness modules, carried as bytecode compiled
    here once (compiling them in every run cost ~6 ms, most of a warm run), each also as compressed source for
    an interpreter with another bytecode format. Both travel base64'd: a long bytes literal alone took ~1.5 ms
    to compile. The modules go into ``sys.modules`` under their real names, so their imports work unchanged.
    It only defines things, so a fork server may run it once and fork every grade from there
    (``sandboxes.forkserver.trust_prelude``)."""
    modules = []
    for name in _HARNESS_MODULES:
        source = (folder / f"{name}.py").read_text(encoding="utf-8")
        code = marshal.dumps(compile(source, f"<{name}>", "exec", dont_inherit=True))
        packed = [base64.b64encode(data).decode() for data in (code, zlib.compress(source.encode(), 9))]
        modules.append((f"aligngym.feedback.{name}", *packed))
    return (
        "import binascii, marshal, sys, types, _frozen_importlib_external as _boot\n"
        f"_same = _boot.MAGIC_NUMBER == {importlib.util.MAGIC_NUMBER!r}\n"
        "def _load(name, code, source):\n"
        "    if _same:\n"
        "        return marshal.loads(binascii.a2b_base64(code))\n"
        "    import zlib\n"
        "    return compile(zlib.decompress(binascii.a2b_base64(source)), name, 'exec', dont_inherit=True)\n"
        "for _name in ('aligngym', 'aligngym.feedback'):\n"
        "    sys.modules[_name] = types.ModuleType(_name)\n"
        "    sys.modules[_name].__path__ = []\n"
        f"for _name, _code, _source in {modules!r}:\n"
        "    _module = sys.modules[_name] = types.ModuleType(_name)\n"
        "    _module.__file__ = globals().get('__file__', '<stdin>')\n"
        "    exec(_load(_name, _code, _source), _module.__dict__)\n"
    )


def _program(folder: Path) -> str:
    """The whole grading program: the prelude, then a line that runs the grade."""
    return _prelude(folder) + _HARNESS_MAIN


# The program every graded run executes; the harness modules are real modules, linted and readable.
HARNESS_PRELUDE = _prelude(Path(__file__).parent)
HARNESS_PROGRAM = HARNESS_PRELUDE + _HARNESS_MAIN
trust_prelude(HARNESS_PRELUDE)


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
        "kind": task.kind,
        "limit": float(test_timeout),
        "names": task.names,
        "entry_point": task.entry_point,
    }
    if task.kind == "cases":
        # only inputs go in: expected outputs never enter the sandbox
        payload["inputs"] = [list(c.input) for c in task.cases]
    else:
        payload["tests"] = list(task.tests)
        payload["compiled"] = {"magic": importlib.util.MAGIC_NUMBER.hex(), "code": task.compiled}
        payload["graded"] = len(task.graded)
    if task.kind == "humaneval":
        payload["setup"] = task.prompt  # the prompt's helpers (trusted task text) run in the tester
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
    redacted: str = ""  # the error without the tests' expected values


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
                redacted=_unhex(rec.get("red")),
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

    def feedback(self, limit: int = 1500, only: range | None = None) -> str:
        """A short report of the first failure, trimmed to about ``limit`` characters; with ``only``, tests
        outside it are never named, just counted."""
        if self.all_passed:
            return "All tests passed."
        shown = [d for d in self.details if only is None or d.index in only]
        fail = next((d for d in shown if not d.passed), None)
        if self.syntax_error:
            text = f"Your code does not compile:\n{self.load_error}"
        elif self.load_error:
            text = f"Your code raised an error while loading, before any test ran:\n{self.load_error}"
        elif fail is None and only is not None:
            hidden = [d for d in self.details if d.index not in only]
            failed = sum(not d.passed for d in hidden)
            text = f"The examples pass, but {failed} of {len(hidden)} hidden tests fail."
        elif fail is None:
            text = f"{self.passed}/{self.total} tests passed."
        else:
            count = f"{self.passed}/{self.total} tests passed" if only is None else "An example fails"
            text = f"{count}. Failing test:\n{fail.source}"
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


def _describe_test(task: CodeTask, index: int, reveal: bool) -> str:
    if task.kind == "cases":
        args = ", ".join(repr(a) for a in task.cases[index].input)
        call = f"{task.entry_point}({args})"
        return f"{call} == {task.cases[index].output!r}" if reveal else call
    if not reveal:
        return task.redacted[index]
    if task.kind == "humaneval":
        return task.graded[index][1] if task.graded else f"check({task.entry_point})"
    lines = [ln for ln in task.tests[index].splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def grade(task: CodeTask, report: HarnessReport, status: str, reveal: bool = False) -> VerifyResult:
    """Turn a parsed report into a verdict; a test without a genuine passing line fails.

    ``reveal``: the feedback may quote expected values (the failing assert, what it compared). Off by default:
    a self-debugging policy shown the expected values learns to memorise them across turns instead of solving.
    """
    details: list[TestDetail] = []
    for i in range(task.total):
        source = _describe_test(task, i, reveal)
        outcome = report.outcomes.get(i)
        if outcome is None:
            if report.load_phase:
                why = f"the solution failed to load: {report.load_error}"
            else:
                why = f"the test did not run: {_STATUS_REASON.get(status, 'the process ended early')}"
            details.append(TestDetail(i, False, source, why, timed_out=status == "timeout"))
            continue
        line = ""
        if reveal and outcome.lineno and task.kind == "tests":
            src_lines = task.tests[i].splitlines()
            line = src_lines[outcome.lineno - 1] if outcome.lineno <= len(src_lines) else ""
        passed, error = outcome.ok, outcome.error if reveal else (outcome.redacted or outcome.error)
        if passed and task.kind == "cases":
            passed, error = _check_value(outcome.value_json, task.cases[i].output, reveal)
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


def _check_value(value_json: str, expected: Any, reveal: bool) -> tuple[bool, str]:
    try:
        got = json.loads(value_json)
    except (ValueError, RecursionError):
        return False, "the returned value could not be read back"
    if compare_strict(got, expected):
        return True, ""
    if not reveal:
        return False, f"returned {got!r} ({type(got).__name__}), which is not the expected value"
    return False, f"expected {expected!r} ({type(expected).__name__}), got {got!r} ({type(got).__name__})"


class UnitTestVerifier:
    """Grade solutions in a sandbox (anything with ``run``/``arun`` like ``aligngym.sandboxes``).

    As a ``Feedback``, ``ascore`` grades the last python block of a reply against ``context["task"]``.
    """

    name = "unit_tests"

    def __init__(
        self,
        sandbox: Any,
        timeout: float | None = 10.0,
        test_timeout: float | None = None,
        reveal_expected: bool = False,
    ):
        self.sandbox = sandbox
        self.timeout = timeout
        self.reveal_expected = reveal_expected
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
        result = self.sandbox.run(
            program, language="python", stdin=stdin, timeout=self.timeout, isolated=True
        )
        return grade(task, parse_report(result.stdout or "", nonce), result.status, self.reveal_expected)

    async def averify(self, solution: str, task: CodeTask | Mapping[str, Any]) -> VerifyResult:
        """Async ``verify``: awaits the sandbox so many verifications share one event loop."""
        task, nonce, program, stdin = self._prepare(solution, task)
        result = await self.sandbox.arun(
            program, language="python", stdin=stdin, timeout=self.timeout, isolated=True
        )
        return grade(task, parse_report(result.stdout or "", nonce), result.status, self.reveal_expected)

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """Grade ``response``'s code against ``context["task"]``; score = pass rate of the graded tests.

        ``context["examples"]`` (default 0) leading tests are examples a self-debug loop may show: they are
        not paid, and the rationale (the redacted report of the first failure) names no test beyond them.
        """
        if "task" not in context:
            raise ValueError("UnitTestVerifier needs the coding task: pass task=... as context")
        examples = int(context.get("examples", 0))
        result = await self.averify(extract_code(response), context["task"])
        graded = result.details[examples:]
        rate = sum(d.passed for d in graded) / len(graded) if graded else 0.0
        components = {
            "pass_rate": rate,
            "all_passed": float(result.all_passed),
            "syntax_error": float(result.syntax_error),
            "timeout": float(result.timed_out),
        }
        rationale = result.feedback(only=range(examples) if examples else None)
        info = {"passed": result.passed, "total": result.total, "examples": examples, "status": result.status}
        return FeedbackResult(rate, components, rationale, info)
