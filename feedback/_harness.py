"""The grading program of a unit-test run: a trusted tester and an untrusted candidate in two processes.

Sent into the sandbox with ``_wire``, ``_testcode`` and ``_candidate`` (see ``unit_tests._program``) and run
isolated (``python -I``: no working directory, PYTHONPATH or user site on ``sys.path``, no start-up files).
The host imports ``_testcode`` too, so host and tester count and name the tests the same way.

* The **tester** (this program's process) never executes solution code. Before it reads anything secret it
  forks the candidate, makes itself non-dumpable (a same-uid process can then neither ptrace it nor open its
  ``/proc/PID/mem`` or ``fd``), and ignores every signal another process could use to interrupt it. Only then
  does it read the nonce and the tests from stdin and run them with the real builtins and modules.
* The **candidate** (the forked child, or a fresh ``python -I`` after a kill) loads the solution and answers
  calls. Every call a test makes to a solution function crosses a pipe as plain data (None, bool, int, float,
  complex, str, bytes, list, tuple, dict, set, frozenset); anything else is a failure, so no object of the
  solution's ever reaches the tests.

The tester reports one ``<nonce> <json>`` line per test on a private duplicate of stdout; the candidate's
stdout goes to stderr and it never learns the nonce.
"""

import _frozen_importlib_external as _boot
import base64
import builtins
import ctypes  # imported before the fork, so neither process pays for it later
import json
import marshal
import os
import signal
import sys
import time

from aligngym.feedback._candidate import SIGNALS, candidate, describe, start_candidate
from aligngym.feedback._remote import CandidateGone, Proxy, Remote, TestTimeout
from aligngym.feedback._testcode import instrument
from aligngym.feedback._wire import MAX_DEPTH, decode

PR_SET_DUMPABLE = 4


def _set_dumpable(flag):
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, flag, 0, 0, 0) == 0


class Tester:
    """Runs the tests in this (trusted) process and reports each verdict."""

    def __init__(self, payload, report_fd, prefix, spawned, program):
        self.payload, self.report_fd, self.prefix = payload, report_fd, prefix
        self.limit = float(payload["limit"])
        self.kind = payload["kind"]
        self.remote = Remote(payload["solution"], payload["names"], self.limit, spawned, program)
        self.seen = []

    def report(self, record):
        data = self.prefix + json.dumps(record, separators=(",", ":")).encode() + b"\n"
        while data:
            data = data[os.write(self.report_fd, data) :]

    def report_test(self, i, ok, timed_out, err, line="", value=""):
        """``err`` is the full error text, or (full, redacted): the redacted one never shows an expected value."""
        full, red = err if type(err) is tuple else (err, err)
        record = {"k": "test", "i": i, "ok": ok, "to": timed_out, "err": full.encode()[:4000].hex()}
        record.update({"red": red.encode()[:4000].hex(), "ln": str(line) if line else ""})
        record["val"] = value.encode().hex()
        self.report(record)

    def explain(self, exc=None):
        """(full, redacted) text of a failure: ``exc`` raised, or (None) an assert that came out false. The full
        text may quote the tests' expected values; the redacted one says only what the solution did."""
        returned = f"; the solution returned {self.remote.last[0]!r:.300}" if self.remote.last else ""
        if exc is not None and (getattr(exc, "from_solution", False) or isinstance(exc, CandidateGone)):
            return describe(exc), describe(exc)  # the solution's own exception: nothing of the tests in it
        if isinstance(exc, TestTimeout):
            text = f"TimeoutError: took longer than {self.limit}s"
            return text, text
        name = "AssertionError" if exc is None else type(exc).__name__
        full = "AssertionError" if exc is None else describe(exc)
        if isinstance(exc, AssertionError | None) and (exc is None or not str(exc)) and len(self.seen) == 2:
            full = f"AssertionError: compared {self.seen[0]!r:.300} with {self.seen[1]!r:.300}"
        return full, name + returned

    def run(self):
        if self.remote.load_error is not None:
            phase, err, timed_out = self.remote.load_error
            self.report({"k": "load", "phase": phase, "err": err.encode()[:4000].hex(), "to": timed_out})
        elif self.kind == "cases":
            self.run_cases()
        elif self.kind == "humaneval":
            self.run_check()
        else:
            self.run_asserts()
        self.report({"k": "end"})

    def test_code(self):
        """The tests' instrumented code: compiled by the host when our bytecode format is its own, else here."""
        built = self.payload.get("compiled") or {}
        if built.get("magic") == _boot.MAGIC_NUMBER.hex():
            return marshal.loads(base64.b64decode(built["code"]))
        graded = self.kind == "humaneval" and self.payload["graded"] > 0
        return [instrument(source, graded=graded) for source in self.payload["tests"]]

    def namespace(self):
        ns = {"__name__": "tests", "__builtins__": builtins, "_ag_seen": self._seen}
        for name in self.remote.names:  # only what the tests asked for: never a builtin the candidate names
            info = self.remote.info.get(name)
            kind = info[0] if type(info) is list and info else "missing"
            if kind == "call":
                ns[name] = Proxy(self.remote, name)
            elif kind == "value" and len(info) == 2:
                try:
                    ns[name] = decode(info[1])
                except (ValueError, RecursionError, OverflowError):
                    pass
            elif kind == "module" and len(info) == 2 and info[1] == name and name in sys.stdlib_module_names:
                ns[name] = __import__(name)  # our own copy of the standard module the solution imported
        return ns

    def _seen(self, value):
        self.seen = [*self.seen[-1:], value]
        return value

    def attempt(self, thunk):
        """(ok, timed_out, error, line) of one test, measured on the remote's taint too."""
        self.remote.tainted, self.seen, self.remote.last = False, [], None
        self.remote.deadline = time.monotonic() + self.limit
        try:
            thunk()
            ok, timed_out, err, line = True, False, "", ""
        except BaseException as exc:
            ok, timed_out, line = False, isinstance(exc, TestTimeout), _test_line(exc)
            err = self.explain(exc)
        finally:
            self.remote.deadline = None
        if ok and self.remote.tainted:  # a swallowed timeout or crash never passes a test
            ok, err = False, "the solution timed out or died during this test"
        return ok, timed_out, err, line

    def run_cases(self):
        entry = self.payload["entry_point"]
        for i, args in enumerate(self.payload["inputs"]):
            out = {}

            def call(args=args, out=out):
                value = Proxy(self.remote, entry)(*args)
                try:
                    out["json"] = json.dumps(_json_only(value), allow_nan=True)
                except (TypeError, ValueError) as exc:
                    exc.from_solution = True  # says what the solution returned, nothing of the tests
                    raise

            ok, timed_out, err, line = self.attempt(call)
            self.report_test(i, ok, timed_out, err, value=out.get("json", ""))

    def run_asserts(self):
        for i, code in enumerate(self.test_code()):

            def test(code=code):
                exec(code, self.namespace())

            self.report_test(i, *self.attempt(test))

    def run_check(self):
        """HumanEval: the prompt's helpers (trusted task text), then ``check(candidate)`` with one verdict per
        graded assert; an assert that never ran fails, with the error that stopped the check."""
        count = self.payload["graded"]
        verdicts = {}  # index -> [ok, timed_out, err, line]
        current = [None]
        ns = self.namespace()
        try:
            exec(compile(self.payload.get("setup", ""), "<prompt>", "exec", dont_inherit=True), ns)
        except Exception:
            pass  # helpers that do not load are simply absent; the check will say what it misses
        entry = Proxy(self.remote, self.payload["entry_point"])
        ns[self.payload["entry_point"]] = entry

        def begin(i):
            current[0] = i
            self.remote.tainted, self.seen, self.remote.last = False, [], None
            self.remote.deadline = time.monotonic() + self.limit

        def settle(ok, timed_out=False, err="", line=""):
            i, current[0] = current[0], None
            self.remote.deadline = None
            if ok and self.remote.tainted:
                ok, err = False, "the solution timed out or died during this assert"
            if i is not None and (i not in verdicts or verdicts[i][0]):
                verdicts[i] = [ok, timed_out, err, line]

        def refute():
            settle(False, err=self.explain())

        def raised(exc):
            settle(False, isinstance(exc, TestTimeout), self.explain(exc), _test_line(exc))

        ns.update(_ag_begin=begin, _ag_assert=lambda i: settle(True), _ag_refute=refute, _ag_raised=raised)
        stopped = ""
        self.remote.deadline = None
        try:
            exec(self.test_code()[0], ns)
            ns["check"](entry)
        except BaseException as exc:
            stopped = self.explain(exc)
            if count == 0:
                self.report_test(0, False, isinstance(exc, TestTimeout), stopped, _test_line(exc))
                return
        if count == 0:
            self.report_test(0, True, False, "")
            return
        for i in range(count):
            why = (
                tuple(f"this assert never ran: {text}" for text in stopped)
                if stopped
                else "this assert never ran"
            )
            self.report_test(i, *verdicts.get(i, [False, False, why, ""]))


def _json_only(value, depth=0):
    """``value`` when it is JSON (cases compare as JSON outside the sandbox), else a TypeError saying why."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if depth > MAX_DEPTH:
        raise ValueError("the returned value is too deep")
    if kind is list:
        return [_json_only(x, depth + 1) for x in value]
    if kind is dict and all(type(k) is str for k in value):
        return {k: _json_only(v, depth + 1) for k, v in value.items()}
    why = "dict keys must be str" if kind is dict else "tuples are not lists" if kind is tuple else ""
    raise TypeError(f"returned a {kind.__name__}: only JSON types count" + (f" ({why})" if why else ""))


def _test_line(exc):
    line, tb = "", exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<test>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "candidate":  # a respawned candidate, given its two pipes
        candidate(int(sys.argv[2]), int(sys.argv[3]))
    with open(sys.argv[0], "rb") as f:
        program = f.read()  # for fresh candidates: before any solution code runs, nothing has changed it
    spawned = start_candidate()
    # Nothing secret is here yet; from now on no other process may read it or interrupt us.
    if not _set_dumpable(0):
        os.write(2, b"aligngym grader: could not make the tester non-dumpable; refusing to grade\n")
        os._exit(3)
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\n")
    payload = json.loads(body)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    report_fd = os.dup(1)  # the private report channel; the tests' own prints go to stderr
    os.dup2(2, 1)
    Tester(payload, report_fd, b"\n" + head.strip() + b" ", spawned, program).run()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
