"""aligngym/Terminal-v0: reach a goal with shell commands in a sandbox; a hidden check decides success."""

from __future__ import annotations

import asyncio
import functools
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngym.feedback.answers import fenced_blocks
from aligngym.sandboxes.base import RunResult, Sandbox, SandboxConfig
from aligngym.sandboxes.lease import SandboxLease

from .base import StepResult, TextEnv, rng_choice_index
from .datasets import checked_tasks, load_rows
from .terminal_checks import expectations_hold, parse_expect

OUTPUT_LIMIT = 2000
NO_COMMAND = "No command found: put your command in a ```bash block."
_SHELL_LANGS = {"", "bash", "sh", "shell"}
# A reply without a fence counts as a command only if it reads like one: one line whose first word is a
# lowercase program name or path (optionally after VAR=value), so prose like "I do not know." is refused.
_COMMAND_LINE = re.compile(r"^(?:\w+=\S*\s+)*(?:\.{0,2}/|~/)?[a-z0-9_][\w.+/-]*(?:[\s;|&<>]|$)")
_NAME = re.compile(r"^[\w.+-]+$")
_FIELDS = {"id", "goal", "setup", "check", "expect", "expert", "requires", "category"}


def _prelude(git_config: tuple[tuple[str, str], ...], extra: str = "") -> str:
    """Shell exports: a fixed git identity and dates (commits work unconfigured, hashes are reproducible)."""
    config = " ".join(
        f"GIT_CONFIG_KEY_{i}={key} GIT_CONFIG_VALUE_{i}={value}" for i, (key, value) in enumerate(git_config)
    )
    return (
        "export GIT_AUTHOR_NAME=agent GIT_AUTHOR_EMAIL=agent@example.com "
        "GIT_COMMITTER_NAME=agent GIT_COMMITTER_EMAIL=agent@example.com "
        "GIT_AUTHOR_DATE=2024-01-01T00:00:00Z GIT_COMMITTER_DATE=2024-01-01T00:00:00Z "
        f"GIT_CONFIG_COUNT={len(git_config)} {config} PAGER=cat TERM=dumb{extra}\n"
    )


_GIT_DEFAULTS = (("init.defaultBranch", "main"),)
_PRELUDE = _prelude(_GIT_DEFAULTS)
# A ``check`` script runs isolated; besides, its git reads no system or global configuration, and these
# settings (command-line strength) override what the agent may have put in the repository's.
_CHECK_PRELUDE = _prelude(
    _GIT_DEFAULTS
    + (
        ("core.fsmonitor", "false"),
        ("core.hooksPath", "/dev/null"),
        ("core.untrackedCache", "false"),
        ("status.showUntrackedFiles", "all"),
        ("log.showSignature", "false"),
    ),
    " GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_NO_REPLACE_OBJECTS=1",
)
_CWD_MARK = "\n\x1ealigngym-cwd:"
# The command runs under `bash -c ... bash` so errors read "bash: line 1: ..." on every backend (the
# script's own file name differs between backends and runs); the EXIT trap reports the final directory.
_INNER = (
    '__aligngym_cmd=$2; [ -n "$1" ] && cd -- "$1" 2>/dev/null; set --; '
    "__aligngym_cwd() { printf '\\n\\036aligngym-cwd:%s\\n' \"$PWD\"; }; trap __aligngym_cwd EXIT; "
    'eval "$__aligngym_cmd"'
)
_CLEAN = "chmod -R u+rwX . 2>/dev/null; find . -mindepth 1 -delete"


@dataclass(frozen=True)
class TerminalTask:
    """One goal: ``setup`` prepares the working directory; ``expect`` and ``check`` say when it is reached."""

    id: str
    goal: str
    check: str = ""
    expect: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    setup: str = ""
    expert: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    category: str = ""

    @classmethod
    def from_row(cls, row: Any, index: int) -> TerminalTask:
        """Validate a task row; a ``ValueError`` names the task (its id, else its position)."""
        if isinstance(row, TerminalTask):
            return row
        if not isinstance(row, Mapping):
            raise ValueError(f"terminal task #{index}: expected a mapping, got {type(row).__name__}")
        label = f"terminal task {row.get('id', f'#{index}')!r}"
        if unknown := sorted(set(row) - _FIELDS):
            raise ValueError(
                f"{label}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
            )
        for key in ("id", "goal"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{label}: {key!r} must be a non-empty string")
        if "expect" not in row and not (isinstance(row.get("check"), str) and row["check"].strip()):
            raise ValueError(f"{label}: give 'expect' (structured) or a 'check' script (a non-empty string)")
        for key in ("setup", "category", "check"):
            if not isinstance(row.get(key, ""), str):
                raise ValueError(f"{label}: {key!r} must be a string")
        for key in ("expert", "requires"):
            value = row.get(key, [])
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{label}: {key!r} must be a list of strings")
        if bad := [r for r in row.get("requires", []) if not _NAME.match(r)]:
            raise ValueError(f"{label}: 'requires' holds command names, got {bad}")
        return cls(
            id=row["id"],
            goal=row["goal"],
            check=row.get("check", ""),
            expect=parse_expect(row["expect"], label) if "expect" in row else (),
            setup=row.get("setup", ""),
            expert=tuple(row.get("expert", ())),
            requires=tuple(row.get("requires", ())),
            category=row.get("category", ""),
        )

    def expert_actions(self) -> list[str]:
        """The expert's commands as assistant replies, one ```bash block each."""
        return [f"```bash\n{command}\n```" for command in self.expert]


def load_tasks(source: str | Path | Iterable[Any] | None = None) -> list[TerminalTask]:
    """Tasks from a JSONL path, a list of rows, or (``None``) the shipped ``envs/data/terminal_tasks.jsonl``."""
    tasks = [TerminalTask.from_row(row, i) for i, row in enumerate(load_rows(source, "terminal_tasks.jsonl"))]
    return checked_tasks(tasks, "terminal")


def extract_command(text: str) -> str | None:
    """The last ```bash / ```sh / bare ``` block of ``text``, else ``text`` if it is one command line, else None."""
    blocks = fenced_blocks(text, _SHELL_LANGS)
    if blocks:
        return blocks[-1] if blocks[-1].strip() else None
    line = text.strip().removeprefix("$ ")
    return line if line and "\n" not in line and _COMMAND_LINE.match(line) else None


def truncate_middle(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail around a marker."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters truncated ...]\n{text[-half:]}"


@functools.cache
def docker_available(image: str = SandboxConfig.image) -> bool:
    """True when a Docker daemon answers and holds ``image`` (checked once per process)."""
    # A short client timeout of our own: the backend's client waits up to 120 s on a hung daemon.
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
            client.images.get(image)
        finally:
            client.close()
    except Exception:
        return False
    return True


class TerminalEnv(TextEnv):
    """Reach a goal in a sandboxed working directory with one shell command per turn.

    Each reply's last ```bash block (or a bare one-line command) runs in the episode's sandbox; the next
    observation is its output (middle-truncated to ~2000 characters) and ``[exit code N]`` or
    ``[timed out after Ts]``. Files and the current directory persist across turns. After every command
    (once every process it started is gone) the task's hidden check runs; success ends the episode
    (terminated). Its output is never shown, and nothing of it is written where the agent could read it.

    A task states its check as ``expect`` (preferred), a list of items that must all hold, judged on the
    host from facts no program the agent wrote takes part in reading: file contents come through
    ``Sandbox.read_bytes`` (links followed only while they stay inside the working directory; FIFOs and
    devices refused), everything else from an isolated probe that follows no link at all. Files over
    64 KiB match nothing.

    * ``{"path": P, ...}`` about ``P`` (relative): ``exists`` (true, false, ``"file"``, ``"dir"``),
      ``text`` (the file's text, trailing newlines ignored, as ``"$(cat P)"``), ``stripped`` (equal once all
      whitespace is removed), ``json`` (parses to this value; ``true`` is not ``1``), ``match`` (a regex
      the text, trailing newlines dropped, fully matches), ``entries`` (a directory's names, any order),
      ``mode`` (permission bits, ``"600"``), ``executable`` (the owner's x bit).
    * ``{"git": [args...], ...}``: ``git args`` exits with ``exit`` (default 0) and its stdout meets
      ``text``/``stripped``/``json``/``match``; git runs on a copy of the repository's refs and staged
      entries with our configuration, so no hook, filter, fsmonitor or setting of the agent's takes part
      (``.git/info`` and submodules are not honoured either).
    * ``{"python": module, "calls": [[function, [args...], expected], ...]}``: the agent's module is
      imported (the working directory put on ``sys.path`` explicitly) in a run of its own and each call's
      return value, passed back as plain data (exact builtin types), must equal ``expected``; the arguments
      (never the expected values) are visible to the agent's code while it runs.

    A ``check`` script (bash) is still accepted: it runs isolated (``bash --noprofile --norc``, environment
    cleared, HOME ``/nonexistent``; ``python3`` there gets neither the working directory on ``sys.path``
    nor a user site, so import the agent's module after ``sys.path.insert(0, "")``) and exit 0 passes. A
    script trusts every program it runs: one that runs the agent's code can be forged by it (``os._exit(0)``
    on import), so prefer ``expect``. With both, both must pass.

    Reward: 0 on intermediate turns; on the last turn (success, or ``max_turns`` reached)
    ``success - step_penalty * steps``. Components every turn: ``success`` (0/1), ``steps`` (turns used),
    ``commands_failed`` (commands so far that exited nonzero, timed out or hit a limit).

    ``sandbox``: None picks the docker backend when a daemon with the sandbox image is reachable
    (``docker_available``), else local; ``"local"``/``"docker"`` force one (taken from the shared pool,
    ``aligngym.sandboxes.pool.get_pool``, released and so reset between episodes, given back by ``close()``);
    a ``Sandbox`` object is used as is (the caller closes it; its working directory is emptied each reset).
    Tasks with ``requires`` (command names such as ``git``) are skipped on sandboxes lacking them;
    ``reset(options={"task_id": ...})`` picks a task by id, else the seeded ``np_random`` picks one.
    """

    success_component = "success"
    description = (
        "Reach a goal with shell commands in a sandbox (files, text, git, fix a test); hidden check."
    )

    def __init__(
        self,
        tasks: str | Path | Iterable[Any] | None = None,
        sandbox: str | Sandbox | None = None,
        max_turns: int = 10,
        timeout: float = 10.0,
        sandbox_kwargs: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        render_mode: str | None = None,
        step_penalty: float = 0.01,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.tasks = load_tasks(tasks)
        self._by_id = {t.id: t for t in self.tasks}
        self.timeout = float(timeout)
        self.step_penalty = float(step_penalty)
        self._sandbox_kwargs = dict(sandbox_kwargs or {})
        self._given: Sandbox | None = sandbox if isinstance(sandbox, Sandbox) else None
        self.backend = self._pick_backend(sandbox)
        # A pooled sandbox held for the current episode (released, so reset, between episodes).
        self._lease = SandboxLease(self.backend, **{"timeout": self.timeout, **self._sandbox_kwargs})
        self._present: frozenset[str] | None = None  # required commands the backend has, probed once
        self.task: TerminalTask | None = None
        self._cwd = ""
        self._failed = 0

    def _pick_backend(self, sandbox: str | Sandbox | None) -> str:
        from aligngym.sandboxes.factory import BACKENDS

        if sandbox is None:
            image = self._sandbox_kwargs.get("image", SandboxConfig.image)
            return "docker" if docker_available(image) else "local"
        if isinstance(sandbox, Sandbox):
            return type(sandbox).__name__
        if isinstance(sandbox, str) and sandbox in BACKENDS:
            return sandbox
        raise ValueError(f"sandbox must be None, a Sandbox or one of {sorted(BACKENDS)}, got {sandbox!r}")

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox the current episode runs in (None before the first reset and after close)."""
        return self._given or (self._lease.get() if self._lease.held else None)

    # -- episode ------------------------------------------------------------------------------------
    async def anew_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        sandbox = await self._fresh_sandbox()
        available = self.available_tasks()
        task_id = (options or {}).get("task_id")
        if task_id is not None:
            task = self._by_id.get(str(task_id))
            if task is None:
                raise ValueError(f"unknown task_id {task_id!r}")
            if task not in available:
                raise ValueError(f"terminal task {task.id!r} requires {list(task.requires)}, missing here")
        elif not available:
            needs = sorted({r for t in self.tasks for r in t.requires} - (self._present or set()))
            raise ValueError(f"no terminal task can run on this sandbox: it lacks {needs}")
        else:
            task = available[rng_choice_index(self.np_random, len(available))]
        self.task, self._cwd, self._failed = task, "", 0
        if task.setup.strip():
            result = await sandbox.arun(_PRELUDE + task.setup, "bash", timeout=self.timeout)
            if not result.ok:
                detail = truncate_middle(result.stdout + result.stderr, 500)
                raise RuntimeError(f"terminal task {task.id!r}: setup failed ({result.status}): {detail}")
        return self._first_message(task), {"task_id": task.id, "backend": self.backend}

    def _first_message(self, task: TerminalTask) -> str:
        return (
            f"{task.goal}\n\nYou have a bash shell in the task's working directory. Reply with one command "
            "per turn in a ```bash block; you will see its output and exit code. Files and the current "
            "directory persist between commands, and git identity is preconfigured. The "
            f"goal is checked after every command, and you have {self.max_turns} commands."
        )

    def available_tasks(self) -> list[TerminalTask]:
        """Tasks whose required commands the sandbox has (probed once, at the first reset)."""
        return [t for t in self.tasks if set(t.requires) <= (self._present or frozenset())]

    async def aturn(self, action: str) -> StepResult:
        task, sandbox = self.task, self.sandbox
        if task is None or sandbox is None:
            raise RuntimeError("call reset() before step()")
        command = extract_command(action)
        result = None
        if command is not None:
            script = f"{_PRELUDE}exec 2>&1\nexec bash -c {shlex.quote(_INNER)} bash {shlex.quote(self._cwd)} {shlex.quote(command)}\n"
            result = await sandbox.arun(script, "bash", timeout=self.timeout)
            self._failed += not result.ok
        return self._score(task, result, await self._passes(task, sandbox))

    async def _passes(self, task: TerminalTask, sandbox: Sandbox) -> bool:
        """The task's check, run after the command is over (every process it started is gone)."""
        if task.expect and not await expectations_hold(sandbox, task.expect, self.timeout):
            return False
        if not task.check.strip():
            return True
        check = await sandbox.arun(_CHECK_PRELUDE + task.check, "bash", timeout=self.timeout, isolated=True)
        return check.ok

    async def aend_episode(self) -> None:
        await asyncio.to_thread(self._lease.release)  # the pool resets the sandbox: that waits on processes

    # -- helpers ------------------------------------------------------------------------------------
    async def _fresh_sandbox(self) -> Sandbox:
        """The sandbox for a new episode, with an empty working directory."""
        if self._given is not None:
            cleaned = await self._given.arun(_CLEAN, "bash", timeout=self.timeout)
            if not cleaned.ok:
                raise RuntimeError(
                    f"could not empty the sandbox working directory: {cleaned.stdout}{cleaned.stderr}"
                )
            sandbox = self._given
        else:
            # The last episode gave its sandbox back (aend_episode) and the pool reset it: this one is clean.
            sandbox = await self._lease.aget()
        if self._present is None:
            self._present = await self._probe(sandbox)
        return sandbox

    async def _probe(self, sandbox: Sandbox) -> frozenset[str]:
        """Which of the commands tasks require exist in ``sandbox``."""
        needed = sorted({r for t in self.tasks for r in t.requires})
        if not needed:
            return frozenset()
        script = f'for c in {" ".join(needed)}; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done; true'
        return frozenset((await sandbox.arun(script, "bash", timeout=self.timeout)).stdout.split())

    def _observe(self, result: RunResult) -> str:
        output = result.stdout
        if (cut := output.rfind(_CWD_MARK)) >= 0 and output.endswith("\n"):
            self._cwd, output = output[cut + len(_CWD_MARK) : -1], output[:cut]
        output = truncate_middle(output + result.stderr)
        lines = [output.rstrip("\n")] if output.strip() else ["(no output)"]
        if result.status == "timeout":
            lines.append(f"[timed out after {self.timeout:g}s]")
        elif result.status in ("memory", "output_limit", "sandbox_error"):
            lines.append(f"[stopped: {result.status.replace('_', ' ')}]")
        if result.exit_code is not None:
            lines.append(f"[exit code {result.exit_code}]")
        return "\n".join(lines)

    def _score(self, task: TerminalTask, result: RunResult | None, success: bool) -> StepResult:
        observation = NO_COMMAND if result is None else self._observe(result)
        done = success or self.turns >= self.max_turns
        if success:
            observation += "\n\nGoal reached."
        return StepResult(
            observation=observation,
            reward=float(success) - self.step_penalty * self.turns if done else 0.0,
            terminated=success,
            components={
                "success": float(success),
                "steps": float(self.turns),
                "commands_failed": float(self._failed),
            },
            info={
                "task_id": task.id,
                "status": None if result is None else result.status,
                "exit_code": None if result is None else result.exit_code,
                "cwd": self._cwd,
            },
        )
