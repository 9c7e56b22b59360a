"""aligngym/CodeExec-v0: write a Python function; the reward is the fraction of unit tests it passes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aligngym.feedback.answers import extract_code as extract_code  # the answer's code (re-exported)
from aligngym.feedback.base import FeedbackResult
from aligngym.feedback.unit_tests import CodeTask, UnitTestVerifier
from aligngym.sandboxes.lease import SandboxLease

from .base import StepResult, TextEnv
from .datasets import checked_tasks, load_rows, pick_task

_INSTRUCTION = "Answer with the complete solution in a single ```python code block."


def load_tasks(source: str | Path | Iterable[Mapping[str, Any] | CodeTask] | None = None) -> list[CodeTask]:
    """Tasks from a JSONL path, a list of rows, or (``None``) the shipped ``envs/data/code_tasks.jsonl``."""
    rows = load_rows(source, "code_tasks.jsonl")
    tasks = [row if isinstance(row, CodeTask) else CodeTask.from_row(row, i) for i, row in enumerate(rows)]
    return checked_tasks(tasks, "code")


class CodeExecEnv(TextEnv):
    """Write a Python function that passes hidden unit tests, run in a sandbox.

    Tasks come in three forms (see ``aligngym.feedback.code_task.CodeTask``): MBPP-style ``tests`` (assert
    snippets), input/output ``cases`` for an ``entry_point`` (compared strictly outside the sandbox), and
    HumanEval rows (each graded assert of ``check`` is one test). The answer is the last fenced python block of
    the assistant message. Grading is split: the tests run in a process that never executes the answer, and
    only plain values cross between them (docs/grading.md).

    Reward components (of the current attempt): ``pass_rate`` (of the graded tests), ``all_passed``,
    ``syntax_error``, ``timeout``.
    With ``max_turns == 1`` the reward is ``pass_rate`` and the episode always terminates. With
    ``max_turns > 1`` (self-debug) a failed attempt is answered with the failing test and its error (with
    ``feedback="redacted"``, the default, the test's expected values are shown as ``…`` and only what the
    solution returned is quoted, and only the first third of the tests, the examples, are ever shown: the
    reward counts only the hidden rest, so answers learned from feedback earn nothing; ``feedback="full"``
    shows every test with its expected values and pays for all of them, as self-debugging papers do, for
    evaluation only), and each
    turn's reward is the change in ``pass_rate`` since the previous attempt, so the episode's rewards sum to
    the final attempt's ``pass_rate``; the episode terminates when every test passes and is truncated after
    ``max_turns`` attempts.

    ``sandbox`` is a backend name (a sandbox is taken on first use from the process-wide pool for that
    backend and config, ``aligngym.sandboxes.pool.get_pool``, and given back, reset, when the episode ends,
    ``reset()`` mid-episode included, so every episode starts in a clean sandbox) or a ready sandbox object,
    which the caller keeps, closes and is responsible for cleaning between episodes.
    """

    success_component = "all_passed"
    description = "Write a Python function; reward = fraction of unit tests passed in a sandbox (self-debug)."

    def __init__(
        self,
        tasks: str | Path | Iterable[Mapping[str, Any] | CodeTask] | None = None,
        sandbox: Any = "local",
        max_turns: int = 1,
        timeout: float = 10.0,
        sandbox_kwargs: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        render_mode: str | None = None,
        feedback: str = "redacted",
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if feedback not in ("redacted", "full"):
            raise ValueError(f"feedback must be 'redacted' or 'full', got {feedback!r}")
        self.feedback = feedback
        self.tasks = load_tasks(tasks)
        self._by_id = {t.id: t for t in self.tasks}
        self.timeout = float(timeout)
        self._sandbox_kwargs = dict(sandbox_kwargs or {})
        self._lease = SandboxLease(sandbox, **{"timeout": self.timeout, **self._sandbox_kwargs})
        self._verifier: UnitTestVerifier | None = None
        self.task: CodeTask | None = None
        self._last_rate = 0.0

    # -- episode ------------------------------------------------------------------------------------
    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        self.task = pick_task(self.tasks, self._by_id, self.np_random, options)
        self._last_rate = 0.0
        return self._first_message(self.task), {"task_id": self.task.id}

    @staticmethod
    def _first_message(task: CodeTask) -> str:
        if task.kind == "humaneval":
            return f"Complete the following Python function.\n\n```python\n{task.prompt.rstrip()}\n```\n\n{_INSTRUCTION}"
        return f"{task.prompt.rstrip()}\n\n{_INSTRUCTION}"

    async def aturn(self, action: str) -> StepResult:
        task = self._current_task()
        if self._verifier is None:
            self._verifier = UnitTestVerifier(
                await self._lease.aget(), timeout=self.timeout, reveal_expected=self.feedback == "full"
            )
        examples = self._examples(task.total)
        return self._score(await self._verifier.ascore(self.messages, action, task=task, examples=examples))

    async def aend_episode(self) -> None:
        self._verifier = None
        await asyncio.to_thread(self._lease.release)  # the pool resets the sandbox: that waits on processes

    # -- helpers ------------------------------------------------------------------------------------
    def _current_task(self) -> CodeTask:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        return self.task

    def _examples(self, total: int) -> int:
        """How many leading tests self-debug feedback may show; the reward counts only the others.

        Shown a failing test, a policy can learn the answer for that input (for a yes/no function "this call
        failed" is the answer) and special-case it next turn. So with redacted feedback a self-debug episode
        shows the first third of the tests (at least one) as examples and pays only for the hidden rest;
        single-turn episodes show nothing and pay for every test; ``feedback="full"`` pays for every test.
        """
        if self.max_turns == 1 or self.feedback == "full" or total < 2:
            return 0
        return max(1, total // 3)

    def _score(self, result: FeedbackResult) -> StepResult:
        rate = result.score
        reward = rate - self._last_rate  # sums to the final graded pass rate over a self-debug episode
        self._last_rate = rate
        all_passed = bool(result.components["all_passed"])
        observation = "All tests passed." if all_passed else f"{result.rationale}\n\nFix the code."
        return StepResult(
            observation=observation,
            reward=reward,
            terminated=all_passed or self.max_turns == 1,
            components=dict(result.components),
            info={"task_id": self._current_task().id, **result.info},
        )
