"""CodeExec-v0: grading, self-debug, task formats, and the harness against reward hacks."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from gymnasium.utils.env_checker import check_env

from aligngym.envs.code_exec import CodeExecEnv, extract_code, load_tasks
from aligngym.feedback.unit_tests import (
    CodeTask,
    UnitTestVerifier,
    build_harness,
    compare_strict,
    parse_report,
)

ADD = {
    "id": "add",
    "prompt": "Write a Python function `add(a: int, b: int) -> int` that returns a + b.",
    "tests": [
        "assert add(1, 2) == 3",
        "assert add(0, 5) == 5",
        "assert add(-1, -1) == -2",
        "assert add(-3, 1) == -2",
    ],
}
PAIR = {
    "id": "pair",
    "prompt": "Write a Python function `pair(x: int) -> list[int]` that returns [x, x * 2].",
    "entry_point": "pair",
    "cases": [
        {"input": [1], "output": [1, 2]},
        {"input": [3], "output": [3, 6]},
        {"input": [0], "output": [0, 0]},
    ],
}
HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
    "entry_point": "total",
}
THREE = {
    "id": "three",
    "prompt": "Write a Python function `three() -> list[int]` that returns [1, 2, 3].",
    "tests": [
        "assert len(three()) == 3",
        "assert three()",
        "assert all(x == y for x, y in zip(three(), [1, 2, 3]))",
        "assert not three() == []",
    ],
}
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
HALF = "def add(a, b):\n    return a + b if a >= 0 else 0\n"  # passes the first two tests only


def block(code: str) -> str:
    return f"Here you go:\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def sandbox():
    from aligngym.sandboxes import make_sandbox

    with make_sandbox("local", timeout=10) as sb:
        yield sb


@pytest.fixture
def make_env(sandbox):
    envs = []

    def make(tasks=(ADD, PAIR), **kwargs):
        env = CodeExecEnv(tasks=list(tasks), sandbox=sandbox, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def attempt(env, code, task_id="add", raw=False):
    env.reset(seed=0, options={"task_id": task_id})
    return env.step(code if raw else block(code))


def test_correct_solution_gets_full_reward(make_env):
    obs, reward, terminated, truncated, info = attempt(make_env(), RIGHT)
    assert reward == 1.0 and terminated and not truncated
    assert info["reward_components"] == {
        "pass_rate": 1.0,
        "all_passed": 1.0,
        "syntax_error": 0.0,
        "timeout": 0.0,
    }
    assert (info["passed"], info["total"], info["status"], info["task_id"]) == (4, 4, "ok", "add")


def test_wrong_solution_gets_zero(make_env):
    _, reward, terminated, _, info = attempt(make_env(), WRONG)
    assert reward == 0.0 and terminated
    assert info["reward_components"]["all_passed"] == 0.0 and info["passed"] == 0


def test_partial_solution_gets_fraction(make_env):
    _, reward, _, _, info = attempt(make_env(), HALF)
    assert reward == 0.5 and info["passed"] == 2 and info["reward_components"]["pass_rate"] == 0.5


def test_syntax_error(make_env):
    _, reward, _, _, info = attempt(make_env(), "def add(a, b)\n    return a + b\n")
    assert reward == 0.0
    assert info["reward_components"]["syntax_error"] == 1.0


def test_cases_task_strict_comparison(make_env):
    env = make_env()
    assert attempt(env, "def pair(x):\n    return [x, x * 2]\n", "pair")[1] == 1.0
    # floats, tuples and bools are not the expected ints/lists, even though == would accept them
    assert attempt(env, "def pair(x):\n    return [float(x), x * 2.0]\n", "pair")[1] == 0.0
    assert attempt(env, "def pair(x):\n    return (x, x * 2)\n", "pair")[1] == 0.0
    assert attempt(env, "def pair(x):\n    return [x, x * 2] if x else [False, False]\n", "pair")[1] == 2 / 3


FORGE = """
import os, re, sys, __main__
print("All tests passed! 4/4 OK")
fake = "deadbeef" * 4
lines = [fake + ' {"k":"test","i":%d,"ok":true,"to":false,"err":"","ln":""}' % i for i in range(4)]
lines += [fake + ' {"k":"end"}', '{"k":"test","i":0,"ok":true}', "4 passed"]
# every cheap place a nonce could hide: stdin, __main__'s globals, the program file, the environment
seen = sys.stdin.read()
seen += " ".join(map(str, vars(__main__).values())) + " ".join(os.environ.values())
for path in (sys.argv[0], getattr(__main__, "__file__", "")):
    try:
        seen += open(path).read()
    except OSError:
        pass
for token in set(re.findall(r"[0-9a-f]{32}", seen)):
    lines += [token + line[32:] for line in lines[:5]]
text = "\\n".join(lines) + "\\n"
sys.stdout.write(text)
sys.stdout.flush()
sys.__stdout__.write(text)
sys.__stdout__.flush()
for fd in range(1, 12):
    try:
        os.write(fd, text.encode())
    except OSError:
        pass
"""

HACKS = {
    "sys_exit_at_import": "import sys\nprint('4 passed')\nsys.exit(0)\n" + RIGHT,
    "os_exit_at_import": "import os\nprint('All tests passed')\nos._exit(0)\n",
    "os_exit_in_function": "import os\n\ndef add(a, b):\n    os._exit(0)\n",
    "raise_systemexit_in_function": "def add(a, b):\n    raise SystemExit(0)\n",
    "sys_exit_in_function": "import sys\n\ndef add(a, b):\n    sys.exit(0)\n",
    "forged_report_then_exit": FORGE + "os._exit(0)\n",
    "forged_report_then_wrong": FORGE + WRONG,
    "eq_faking_return": "class Any:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Any()\n",
    "patched_builtins_and_json": (
        "import builtins, json\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.str = lambda *a, **k: 'true'\n"
        "builtins.len = lambda *a: 0\n"
        'json.dumps = lambda *a, **k: \'{"k": "test", "ok": true}\'\n'
        "json.JSONEncoder.encode = lambda self, o: 'true'\n"
        "json.loads = lambda *a, **k: {'ok': True}\n" + WRONG
    ),
}


@pytest.mark.parametrize("name", sorted(HACKS))
def test_hacks_get_no_credit(make_env, name):
    _, reward, _, _, info = attempt(make_env(), HACKS[name])
    assert reward == 0.0, info
    assert info["passed"] == 0


CASE_HACKS = {
    "eq_faking_object": "class Any:\n    def __eq__(self, o):\n        return True\n\ndef pair(x):\n    return Any()\n",
    "eq_faking_list_subclass": (
        "class L(list):\n    def __eq__(self, o):\n        return True\n\ndef pair(x):\n    return L([9])\n"
    ),
    "patched_json_and_builtins": (
        "import builtins, json\n"
        "json.dumps = lambda *a, **k: '[1, 2]'\n"
        "json.JSONEncoder.encode = lambda self, o: '[1, 2]'\n"
        "builtins.type = lambda *a: list\n"
        "builtins.repr = lambda *a: '[1, 2]'\n"
        "def pair(x):\n    return None\n"
    ),
}


@pytest.mark.parametrize("name", sorted(CASE_HACKS))
def test_case_hacks_get_no_credit(make_env, name):
    _, reward, _, _, info = attempt(make_env(), CASE_HACKS[name], "pair")
    assert reward == 0.0, info


def test_assert_tests_ignore_faked_eq_bool_and_patched_builtins(make_env):
    env = make_env(tasks=[THREE])
    fake = (
        "import builtins\n"
        "builtins.len = lambda x: 3\n"
        "builtins.all = lambda x: True\n"
        "class Fake:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __bool__(self):\n        return True\n"
        "    def __iter__(self):\n        return iter([Fake(), Fake(), Fake()])\n"
        "def three():\n    return Fake()\n"
    )
    obs, reward, _, _, info = attempt(env, fake, "three")
    assert reward == 0.0, obs
    try:
        result = UnitTestVerifier(env._lease.get()).verify(fake, THREE)
    finally:
        env._lease.release()
    # the object never reaches the tests: only plain values cross from the solution's process
    assert all("a Fake object crossed to the tests" in d.error for d in result.details), result.details
    assert attempt(env, "def three():\n    return [1, 2, 3]\n", "three")[1] == 1.0
    assert attempt(env, "def three():\n    return (1, 2, 4)\n", "three")[1] == 0.75  # plain == semantics


def test_harness_survives_a_correct_solution_that_patches_everything(make_env):
    patched = (
        "import builtins, json, os\n"
        "json.dumps = json.loads = None\n"
        "json.JSONEncoder.encode = None\n"
        "builtins.repr = builtins.str = builtins.type = builtins.range = builtins.len = None\n"
        "os.write = lambda *a: 0\n"
        "def pair(x):\n    return [x, x * 2]\n"
    )
    assert attempt(make_env(), patched, "pair")[1] == 1.0


def test_exit_midway_fails_that_test_and_a_fresh_process_takes_the_rest(make_env):
    code = "import os\ncalls = [0]\n\ndef add(a, b):\n    calls[0] += 1\n    if calls[0] == 3:\n        os._exit(0)\n    return a + b\n"
    obs, reward, _, _, info = attempt(make_env(), code)
    # the third call kills the solution's process: that test fails; a new process (calls back to 0) answers the 4th
    assert reward == 0.75 and info["passed"] == 3
    assert "assert add(-1, -1) == …" in obs and "died" in obs


def test_one_endless_test_fails_alone(make_env):
    code = "def add(a, b):\n    while a == 0:\n        pass\n    return a + b\n"
    env = make_env(timeout=6.0)
    obs, reward, _, _, info = attempt(env, code)
    assert reward == 0.75 and info["status"] == "ok"
    assert info["reward_components"]["timeout"] == 1.0
    assert "add(0, 5)" in obs and "Timeout" in obs


def test_endless_loop_everywhere_is_a_timeout(make_env):
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n\ndef add(a, b):\n    while True:\n        pass\n"
    _, reward, _, _, info = attempt(make_env(timeout=2.0), code)
    assert reward == 0.0 and info["reward_components"]["timeout"] == 1.0


def test_last_python_block_is_graded(make_env):
    text = f"First try:\n```python\n{WRONG}```\nShell:\n```bash\nls\n```\nBetter:\n```py\n{RIGHT}```\nDone."
    assert attempt(make_env(), text, raw=True)[1] == 1.0
    assert extract_code("no fences at all") == "no fences at all"
    assert extract_code("```python\nx = 1\n```\n```text\ny\n```") == "x = 1\n"
    assert extract_code("cut off:\n```python\nx = 2") == "x = 2\n"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("    return sum(xs)\n", 1.0),  # a completion of the prompt
        ("def total(xs: List[int]) -> int:\n    return sum(xs)\n", 1.0),  # needs the prompt's import
        ("def total(xs):\n    return len(xs)\n", 0.5),  # per-assert credit: len([]) == 0 is right
        ("def total(xs):\n    return -1\n", 0.0),
    ],
)
def test_humaneval_rows(make_env, answer, expected):
    env = make_env(tasks=[HUMANEVAL])
    obs, _ = env.reset(seed=0)
    assert "def total" in obs and "```python" in obs
    obs, reward, _, _, info = env.step(block(answer))
    assert reward == expected and info["total"] == 2
    if expected < 1:
        assert "assert candidate([1, 2]) == …" in obs


def test_jsonl_path(tmp_path, sandbox):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(ADD) + "\n\n" + json.dumps(PAIR) + "\n")
    env = CodeExecEnv(tasks=str(path), sandbox=sandbox)
    assert [t.id for t in env.tasks] == ["add", "pair"]
    assert attempt(env, RIGHT)[1] == 1.0
    assert len(CodeExecEnv(tasks=path, sandbox=sandbox).tasks) == 2
    path.write_text("{not json}\n")
    with pytest.raises(ValueError, match="line 1"):
        load_tasks(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "t1", "prompt": "p"}, r"'t1'.*missing 'tests'"),
        ({"id": "t2", "tests": ["assert True"]}, r"'t2'.*'prompt'"),
        ({"prompt": "p", "tests": ["assert True"]}, r"missing 'id'"),
        ({"id": "t3", "prompt": "p", "cases": [{"input": [1], "output": 1}]}, r"'t3'.*entry_point"),
        ({"id": "t4", "prompt": "p", "entry_point": "f", "cases": [{"input": 1}]}, r"'t4'.*case 0"),
        ({"id": "t5", "prompt": "p", "tests": []}, r"'t5'.*'tests'"),
        ({"id": "t6", "prompt": "p", "tests": ["assert (("]}, r"'t6'.*test 0 is not valid Python"),
        ({"task_id": "H/1", "prompt": "p", "test": "def check(c): pass"}, r"'H/1'.*entry_point"),
    ],
)
def test_malformed_task_raises(row, message):
    with pytest.raises(ValueError, match=message):
        CodeExecEnv(tasks=[row])


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        CodeExecEnv(tasks=[ADD, ADD])


def test_same_seed_same_task_and_options(sandbox):
    env = CodeExecEnv(sandbox=sandbox)
    assert len(env.tasks) >= 45
    first = [env.reset(seed=s)[1]["task_id"] for s in range(8)]
    assert first == [env.reset(seed=s)[1]["task_id"] for s in range(8)]
    assert len(set(first)) > 1
    obs, info = env.reset(options={"task_id": "gcd"})
    assert info["task_id"] == "gcd" and "gcd(a: int, b: int)" in obs and "```python" in obs
    with pytest.raises(ValueError, match="unknown task_id"):
        env.reset(options={"task_id": "nope"})


def test_self_debug_wrong_then_right(make_env):
    env = make_env(max_turns=3)
    env.reset(seed=0, options={"task_id": "add"})
    obs, r1, terminated, truncated, info = env.step(block(HALF))
    # the first of the 4 tests is the example feedback may show; the reward counts the 3 hidden ones
    assert (terminated, truncated, r1, info["examples"]) == (False, False, 1 / 3, 1)
    assert "The examples pass, but 2 of 3 hidden tests fail." in obs and "Fix the code." in obs
    assert "add(" not in obs  # a hidden test is never named
    assert info["messages"][-1] == {"role": "user", "content": obs}
    obs, r2, terminated, truncated, info = env.step(block(RIGHT))
    assert terminated and not truncated
    assert abs(r1 + r2 - 1.0) < 1e-9 and abs(env.episode_reward - 1.0) < 1e-9
    assert info["reward_components"]["pass_rate"] == 1.0


def test_self_debug_regression_and_truncation(make_env):
    env = make_env(max_turns=3)
    env.reset(seed=0, options={"task_id": "add"})
    rewards = []
    for code in (HALF, WRONG, WRONG):
        _, reward, terminated, truncated, _ = env.step(block(code))
        rewards.append(reward)
    assert not terminated and truncated
    assert rewards == [1 / 3, -1 / 3, 0.0] and sum(rewards) == 0.0
    with pytest.raises(RuntimeError):
        env.step(block(RIGHT))


def test_check_env_and_random_text():
    env = CodeExecEnv(timeout=5.0)  # creates and owns a local sandbox
    check_env(env, skip_render_check=True)
    env.reset(seed=1)
    _, reward, terminated, _, info = env.step("random words, no code ~!@")
    assert reward == 0.0 and terminated and info["reward_components"]["pass_rate"] == 0.0
    env.close()
    env.close()


def test_astep_runs_concurrently(make_env):
    envs = [make_env() for _ in range(4)]

    async def episode(env, code):
        env.reset(seed=0, options={"task_id": "add"})
        return (await env.astep(block(code)))[1]

    async def main():
        return await asyncio.gather(
            *(episode(e, c) for e, c in zip(envs, [RIGHT, WRONG, HALF, RIGHT], strict=True))
        )

    assert asyncio.run(main()) == [1.0, 0.0, 0.5, 1.0]


def test_given_sandbox_is_not_closed(sandbox):
    env = CodeExecEnv(tasks=[ADD], sandbox=sandbox)
    env.close()
    assert attempt(CodeExecEnv(tasks=[ADD], sandbox=sandbox), RIGHT)[1] == 1.0


def test_step_before_reset(sandbox):
    with pytest.raises(RuntimeError, match="reset"):
        CodeExecEnv(tasks=[ADD], sandbox=sandbox).step(block(RIGHT))


def test_compare_strict():
    assert compare_strict({"a": [1, 2.5, None, "x"]}, {"a": [1, 2.5, None, "x"]})
    assert not compare_strict(True, 1) and not compare_strict(1, True)
    assert not compare_strict(1, 1.0) and not compare_strict([1], {"0": 1})
    assert not compare_strict([1, [2]], [1, [2.0]]) and not compare_strict({"a": 1}, {"a": 1, "b": 2})
    assert compare_strict(0.1 + 0.2, 0.3) and not compare_strict(0.3, 0.31)


def test_harness_inputs_hold_no_expected_values_and_stdin_holds_the_nonce():
    task = CodeTask.from_row({**PAIR, "cases": [{"input": [1], "output": "EXPECTED-SENTINEL"}]})
    program, stdin = build_harness("def pair(x): pass", task, nonce="n" * 32)
    assert "EXPECTED-SENTINEL" not in program + stdin
    assert "n" * 32 not in program and stdin.startswith("n" * 32 + "\n")


def test_parse_report_needs_the_nonce():
    nonce = "a" * 32
    good = f'{nonce} {{"k":"test","i":0,"ok":true,"to":false,"err":"","ln":""}}'
    forged = good.replace(nonce, "b" * 32)
    report = parse_report(f"{forged}\n{good[33:]}\nok\n", nonce)
    assert report.outcomes == {}
    assert parse_report(good, nonce).outcomes[0].ok
    assert not parse_report(f"{good}\n{good}\n", nonce).outcomes[0].ok  # a forked duplicate


def test_verifier_feedback_names_failures(sandbox):
    result = UnitTestVerifier(sandbox, timeout=10).verify(HALF, ADD)
    assert (result.passed, result.total, result.status) == (2, 4, "ok")
    assert result.first_failure is not None and result.first_failure.source == "assert add(-1, -1) == …"
    full = UnitTestVerifier(sandbox, timeout=10, reveal_expected=True).verify(HALF, ADD)
    assert full.first_failure.source == "assert add(-1, -1) == -2"
    assert full.first_failure.error == "AssertionError: compared 0 with -2"
    assert re.search(r"2/4 tests passed", result.feedback())
    assert (
        len(UnitTestVerifier(sandbox).verify("raise ValueError('" + "x" * 5000 + "')", ADD).feedback())
        <= 1500
    )


def test_redacted_feedback_never_quotes_an_expected_value(make_env):
    """Self-debug feedback says which call failed and what the solution returned; the expected values stay
    hidden, so a policy cannot collect them over turns and memorise them (``feedback="full"`` shows them)."""
    env = make_env(max_turns=3)
    env.reset(seed=0, options={"task_id": "pair"})
    obs = env.step(block("def pair(x):\n    return [x, x]\n"))[0]
    assert "pair(1)" in obs and "returned [1, 1]" in obs and "[1, 2]" not in obs
    assert "pair(3)" not in obs  # only the example (the first third of the tests) is ever named
    full = make_env(max_turns=3, feedback="full")
    full.reset(seed=0, options={"task_id": "pair"})
    assert "expected [1, 2]" in full.step(block("def pair(x):\n    return [x, x]\n"))[0]
    with pytest.raises(ValueError, match="feedback"):
        make_env(feedback="everything")
