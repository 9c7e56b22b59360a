"""The shipped code tasks: well formed, and each reference passes while its wrong solution does not."""

from __future__ import annotations

import asyncio
import json
import re
from importlib import resources

import pytest

from aligngym.envs.code_exec import CodeExecEnv, load_tasks
from aligngym.feedback.unit_tests import CodeTask, UnitTestVerifier, VerifyResult

ROWS = [
    json.loads(line)
    for line in resources.files("aligngym.envs")
    .joinpath("data/code_tasks.jsonl")
    .read_text("utf-8")
    .splitlines()
    if line.strip()
]


def test_enough_tasks_with_unique_ids_and_both_forms():
    assert len(ROWS) >= 45
    ids = [row["id"] for row in ROWS]
    assert len(ids) == len(set(ids))
    kinds = [CodeTask.from_row(row).kind for row in ROWS]
    assert set(kinds) == {"tests", "cases"}
    assert 0.35 <= kinds.count("cases") / len(kinds) <= 0.65
    assert [t.id for t in load_tasks()] == ids


@pytest.mark.parametrize("row", ROWS, ids=[row["id"] for row in ROWS])
def test_row_is_valid(row):
    task = CodeTask.from_row(row)
    assert row["difficulty"] in {"easy", "medium"}
    assert 3 <= task.total <= 6
    assert isinstance(row["reference"], str) and isinstance(row["wrong"], str)
    assert row["reference"].strip() != row["wrong"].strip()
    # the prompt names the function and its exact signature, as the reference defines it
    signature = re.search(r"`(\w+)\((.*?)\)(?: -> (.*?))?`", row["prompt"])
    assert signature, "the prompt must show the signature in backticks"
    assert f"def {signature.group(0).strip('`')}:" in row["reference"]
    if task.kind == "cases":
        assert signature.group(1) == task.entry_point
        for case in task.cases:  # JSON values only: they are compared after a JSON round trip
            assert json.loads(json.dumps(case.input)) == case.input
    else:
        assert all(f"{signature.group(1)}(" in test for test in task.tests)


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[VerifyResult, VerifyResult]]:
    """Grade every reference and wrong solution in one sandbox, a few runs at a time."""
    from aligngym.sandboxes import make_sandbox

    async def grade_all(verifier: UnitTestVerifier) -> list[VerifyResult]:
        gate = asyncio.Semaphore(4)

        async def one(code: str, row: dict) -> VerifyResult:
            async with gate:
                return await verifier.averify(code, row)

        return await asyncio.gather(*(one(row[key], row) for row in ROWS for key in ("reference", "wrong")))

    with make_sandbox("local", timeout=20) as sandbox:
        results = asyncio.run(grade_all(UnitTestVerifier(sandbox, timeout=20, test_timeout=5)))
    return {row["id"]: (results[2 * i], results[2 * i + 1]) for i, row in enumerate(ROWS)}


def test_reference_passes_and_wrong_fails_for_every_task(verdicts):
    problems = []
    for task_id, (reference, wrong) in verdicts.items():
        if reference.pass_rate != 1.0:
            problems.append(
                f"{task_id}: reference {reference.passed}/{reference.total}: {reference.feedback()}"
            )
        if wrong.pass_rate >= 1.0:
            problems.append(f"{task_id}: the wrong solution passes every test")
        if wrong.status != "ok" or reference.status != "ok":
            problems.append(f"{task_id}: sandbox status {reference.status}/{wrong.status}")
    assert not problems, "\n".join(problems)


def test_env_rewards_a_shipped_reference():
    row = next(r for r in ROWS if r["id"] == "roman_to_int")
    env = CodeExecEnv(timeout=10.0)
    env.reset(options={"task_id": row["id"]})
    _, reward, terminated, _, info = env.step(f"```python\n{row['reference']}```")
    assert reward == 1.0 and terminated and info["task_id"] == row["id"]
    env.reset(options={"task_id": row["id"]})
    assert env.step(f"```python\n{row['wrong']}```")[1] < 1.0
    env.close()
