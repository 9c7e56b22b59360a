"""Cost of grading: the split grader (tester + candidate) against the single-process harness it replaced.

Usage: ``python benchmarks/grading.py --runs 40 [--backends local oneshot docker] [--baseline cc08f7f]``.
Grades one 10-test task of each form (MBPP ``tests``, ``cases``, HumanEval ``check`` with 10 asserts) with a
correct solution, alternating the two graders run by run in the same sandbox so load hits both alike, and
prints the median and p90 wall time per grade and the ratio. The baseline is the pre-split harness read from
git at ``--baseline`` (this needs a git checkout).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from aligngym.feedback import unit_tests
from aligngym.sandboxes import make_sandbox

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "tests": (
        {
            "id": "add",
            "prompt": "add",
            "tests": [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(10)],
        },
        "def add(a, b):\n    return a + b\n",
    ),
    "cases": (
        {
            "id": "pair",
            "prompt": "pair",
            "entry_point": "pair",
            "cases": [{"input": [i], "output": [i, 2 * i]} for i in range(10)],
        },
        "def pair(x):\n    return [x, 2 * x]\n",
    ),
    "humaneval": (
        {
            "task_id": "HumanEval/x",
            "prompt": "def add(a: int, b: int) -> int:\n    '''a + b'''\n",
            "entry_point": "add",
            "test": "def check(candidate):\n"
            + "".join(f"    assert candidate({i}, {i + 1}) == {2 * i + 1}\n" for i in range(10)),
        },
        "    return a + b\n",
    ),
}
BACKENDS = {"local": ("local", {}), "oneshot": ("local", {"fork_server": False}), "docker": ("docker", {})}


def baseline_module(commit: str) -> ModuleType:
    """The pre-split ``unit_tests`` module at ``commit``, with its own harness program."""

    def show(path: str) -> str:
        argv = ["git", "-C", str(ROOT), "show", f"{commit}:{path}"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    folder = Path(tempfile.mkdtemp(prefix="aligngym-baseline-"))
    (folder / "_harness.py").write_text(show("feedback/_harness.py"))
    (folder / "baseline_unit_tests.py").write_text(show("feedback/unit_tests.py"))
    spec = importlib.util.spec_from_file_location("baseline_unit_tests", folder / "baseline_unit_tests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def grade_once(module: ModuleType, sandbox, form: str, isolated: bool) -> float:
    row, solution = TASKS[form]
    start = time.perf_counter()
    task = module.as_task(row)
    nonce = module.new_nonce()
    program, stdin = module.build_harness(solution, task, nonce=nonce)
    extra = {"isolated": True} if isolated else {}
    result = sandbox.run(program, language="python", stdin=stdin, timeout=20, **extra)
    verdict = module.grade(task, module.parse_report(result.stdout, nonce), result.status)
    elapsed = time.perf_counter() - start
    if not verdict.all_passed:
        raise RuntimeError(f"{form}: the correct solution did not pass: {verdict.feedback()} {result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="grades per grader, form and backend")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--baseline", default="cc08f7f", help="git commit of the single-process harness")
    args = parser.parse_args()
    old = baseline_module(args.baseline)
    table = Table(title=f"grading a 10-test task, {args.runs} runs each (ms: median / p90)")
    for column in ("backend", "form", f"single-process ({args.baseline})", "split grader", "ratio"):
        table.add_column(column)
    for name in args.backends:
        backend, options = BACKENDS[name]
        try:
            sandbox = make_sandbox(backend, timeout=20, **options)
            sandbox.run("pass")
        except Exception as exc:  # noqa: BLE001 - a missing backend is reported, not fatal
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        with sandbox:
            for form in TASKS:
                if form == "humaneval" and not hasattr(old, "assemble_solution"):
                    continue
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(3):  # warm-up
                    grade_once(old, sandbox, form, False)
                    grade_once(unit_tests, sandbox, form, True)
                for _ in range(args.runs):
                    times["old"].append(grade_once(old, sandbox, form, False))
                    times["new"].append(grade_once(unit_tests, sandbox, form, True))
                cells = []
                for key in ("old", "new"):
                    ordered = sorted(times[key])
                    p90 = ordered[int(0.9 * (len(ordered) - 1))]
                    cells.append(f"{statistics.median(ordered) * 1e3:.1f} / {p90 * 1e3:.1f}")
                ratio = statistics.median(times["new"]) / statistics.median(times["old"])
                table.add_row(name, form, *cells, f"{ratio:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
