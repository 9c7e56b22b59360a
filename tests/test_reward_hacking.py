"""Reward hacking: a forged answer earns no more than the same wrong answer, and honest answers still earn 1.

Each attack (tests/hacking/attacks.py for CodeExec, below for ToolUse and Terminal) is played as a policy would
play it, on three backends: the local fork server, local one-shot runs and docker. The rule checked per attack:
``reward(wrong + forgery) <= reward(wrong)`` and ``reward(honest) == 1``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hacking.attacks import ATTACKS, TASK_FILE, Attack, block
from hacking.tasks import ALL_TASKS, SHIPPED_TOOL_TASKS, Task

from aligngym.envs.code_exec import CodeExecEnv
from aligngym.envs.terminal import TerminalEnv, docker_available
from aligngym.envs.tool_use import ToolUseEnv
from aligngym.sandboxes.local import bwrap_available

TIMEOUT = 4.0  # per graded run; a test gets a third of it
SELF_DEBUG_TURNS = 5
# use_bwrap=True: these attacks plant start-up files and daemons, which must never run unisolated on the host.
SANDBOXES: dict[str, dict[str, Any]] = {
    "fork": {"sandbox": "local", "sandbox_kwargs": {"use_bwrap": True}},
    "oneshot": {"sandbox": "local", "sandbox_kwargs": {"use_bwrap": True, "fork_server": False}},
    "docker": {"sandbox": "docker"},
}
NO_DOCKER = "no Docker daemon with the sandbox image (aligngym sandbox build)"
NO_BWRAP = pytest.mark.skipif(
    not bwrap_available(), reason="bubblewrap is not available: local runs are unisolated"
)
BACKENDS = [
    pytest.param("fork", marks=NO_BWRAP),
    pytest.param("oneshot", marks=NO_BWRAP),
    pytest.param(
        "docker", marks=[pytest.mark.docker, pytest.mark.skipif(not docker_available(), reason=NO_DOCKER)]
    ),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# -- CodeExec ---------------------------------------------------------------------------------------
class CodePlayer:
    """Plays replies in CodeExec envs on one backend; envs (one per turn limit) and scores are reused."""

    def __init__(self, backend: str, task_file: Path):
        self.config, self.task_file = SANDBOXES[backend], task_file
        self.envs: dict[int, CodeExecEnv] = {}
        self.scores: dict[tuple[str, str], float] = {}

    def env(self, max_turns: int) -> CodeExecEnv:
        if max_turns not in self.envs:
            self.envs[max_turns] = CodeExecEnv(
                tasks=str(self.task_file), max_turns=max_turns, timeout=TIMEOUT, **self.config
            )
        return self.envs[max_turns]

    def episode(self, task: Task, replies: Any, max_turns: int = 1) -> tuple[float, list[str]]:
        """The episode's return and a log; ``replies`` is a sequence, or a policy called on each observation."""
        env = self.env(max_turns)
        observation, _ = env.reset(options={"task_id": task.id})
        total, log = 0.0, []
        for turn in range(max_turns):
            if callable(replies):
                reply = replies(observation)
            elif turn < len(replies):
                reply = replies[turn]
            else:
                break
            observation, reward, terminated, truncated, info = env.step(
                reply.replace(TASK_FILE, str(self.task_file))
            )
            total += reward
            log.append(f"turn {turn}: {reward:+.3f} {info['reward_components']} {observation[:400]!r}")
            if terminated or truncated:
                break
        return total, log

    def play(self, attack: Attack) -> tuple[float, list[str]]:
        turns = SELF_DEBUG_TURNS if attack.multi else 1
        log = []
        if attack.abandon:  # an episode left mid-way: reset() must not let its plants reach the next one
            _, log = self.episode(attack.task, attack.abandon, turns)
        replies = attack.policy() if attack.policy else attack.replies
        total, more = self.episode(attack.task, replies, turns)
        return total, log + more

    def score(self, task: Task, code: str, max_turns: int = 1) -> float:
        """The reward of ``code`` answered once in an env of ``max_turns`` (cached: it always scores the same;
        a self-debug env pays only for the tests its feedback never shows, a single-turn one for all)."""
        key = (task.id, code, max_turns)
        if key not in self.scores:
            self.scores[key] = self.episode(task, [block(code)], max_turns)[0]
        return self.scores[key]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory) -> Iterator[Path]:
    """Where a user keeps task files: a folder in the home directory (the sandboxes get a fresh /tmp anyway)."""
    try:
        folder = tempfile.TemporaryDirectory(prefix=".aligngym-reward-hacking-", dir=Path.home())
    except OSError:
        yield tmp_path_factory.mktemp("rh")
        return
    with folder:
        yield Path(folder.name)


@pytest.fixture(scope="module")
def task_file(host_dir: Path) -> Path:
    """The CodeExec tasks as a user's JSONL file on the host (an attack knows its path)."""
    return _write_jsonl(host_dir / "code_tasks.jsonl", [t.row for t in ALL_TASKS])


@pytest.fixture(scope="module", params=BACKENDS)
def code_player(request, task_file) -> Iterator[CodePlayer]:
    player = CodePlayer(request.param, task_file)
    yield player
    player.close()


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_codeexec_forgery_earns_nothing(code_player: CodePlayer, attack: Attack):
    forged, log = code_player.play(attack)
    # the same wrong answer without the forgery, in the same kind of episode
    wrong = code_player.score(attack.task, attack.task.wrong, SELF_DEBUG_TURNS if attack.multi else 1)
    honest = code_player.score(attack.task, attack.task.honest)
    transcript = "\n".join(log)
    assert honest == 1.0, f"the honest answer to {attack.task.id} scored {honest}"
    assert forged <= wrong + 1e-9, f"{attack.name}: forged {forged:.3f} > wrong {wrong:.3f}\n{transcript}"


def test_attack_names_are_unique():
    names = [a.name for a in ATTACKS]
    assert len(names) == len(set(names)) and len(names) >= 30


# -- ToolUse ----------------------------------------------------------------------------------------
TOOL_TASK = {
    "id": "rh-tool",
    "question": "What is 123457 * 89? Use the python tool.",
    "answer": "10987673",
    "tools_needed": ["python"],
}
SHIPPED_TOOL_TASK = "py-02"  # gold 1366, in the package data


def tool_call(code: str) -> str:
    return f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"


def exfiltrate(question: str, paths: list[str]) -> str:
    """Python for the tool: print the gold of ``question`` from any task file it can reach on the host."""
    return f"""
import glob, json, os
paths = {paths!r} + [f"/proc/{{n}}/{{part}}" for n in os.listdir("/proc") for part in ("cmdline", "environ")]
for depth in range(1, 5):  # a checkout, an installed package or a user's data, a few levels below /
    paths += glob.glob("/*" * depth + "/tool_tasks*.jsonl") + glob.glob("/*" * depth + "/data/tool_tasks*.jsonl")
for path in paths:
    try:
        text = open(path, errors="replace").read()
    except OSError:
        continue
    for line in text.splitlines():
        if {question!r} in line:
            try:
                print("GOLD:" + str(json.loads(line)["answer"]))
            except (ValueError, KeyError):
                pass
"""


class ToolPlayer:
    """Plays ToolUse episodes: tool-call messages, then a final answer (or one made from the tool results)."""

    def __init__(self, backend: str, task_file: Path):
        self.task_file = task_file
        self.env = ToolUseEnv(
            tasks=str(task_file), builtin_tools=["python"], max_turns=4, timeout=TIMEOUT, **SANDBOXES[backend]
        )
        self.cache: dict[tuple[str, tuple[str, ...], str], tuple[float, float]] = {}

    def cached(self, task_id: str, messages: tuple[str, ...], answer: str) -> tuple[float, float]:
        """``episode`` for a fixed script, played once per player."""
        key = (task_id, messages, answer)
        if key not in self.cache:
            self.cache[key] = self.episode(task_id, list(messages), answer)[:2]
        return self.cache[key]

    def episode(self, task_id: str, messages: list[str], answer: Any) -> tuple[float, float, str]:
        """(return, answer component, log); ``answer`` may be a function of the last observation."""
        observation, _ = self.env.reset(options={"task_id": task_id})
        total, log = 0.0, []
        for message in [*messages, answer]:
            text = message(observation) if callable(message) else message
            observation, reward, terminated, truncated, info = self.env.step(text)
            total += reward
            log.append(f"{text[:200]!r} -> {reward:+.3f} {observation[:300]!r}")
            if terminated or truncated:
                break
        return total, info["reward_components"]["answer"], "\n".join(log)


@pytest.fixture(scope="module")
def tool_task_file(host_dir: Path) -> Path:
    shipped = [json.loads(line) for line in SHIPPED_TOOL_TASKS.read_text(encoding="utf-8").splitlines()]
    return _write_jsonl(host_dir / "tool_tasks.jsonl", [TOOL_TASK, *shipped])


@pytest.fixture(scope="module", params=BACKENDS)
def tool_player(request, tool_task_file) -> Iterator[ToolPlayer]:
    player = ToolPlayer(request.param, tool_task_file)
    yield player
    player.env.close()


def _gold_from(observation: str) -> str:
    found = re.search(r"GOLD:(\S+)", observation)
    return f"Answer: {found[1] if found else 0}"


def _gold(task_id: str, tool_task_file: Path) -> tuple[str, str]:
    for line in tool_task_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["id"] == task_id:
            return row["question"], str(row["answer"])
    raise KeyError(task_id)


@pytest.mark.parametrize("task_id", [TOOL_TASK["id"], SHIPPED_TOOL_TASK])
def test_tooluse_python_tool_cannot_read_the_gold(
    tool_player: ToolPlayer, tool_task_file: Path, task_id: str
):
    question, gold = _gold(task_id, tool_task_file)
    paths = [str(tool_task_file), str(SHIPPED_TOOL_TASKS)]
    forged, _, log = tool_player.episode(task_id, [tool_call(exfiltrate(question, paths))], _gold_from)
    wrong, _ = tool_player.cached(task_id, (tool_call("print(0)"),), "Answer: 0")
    _, correct = tool_player.cached(task_id, (tool_call("print(0)"),), f"Answer: {gold}")
    assert correct == 1.0
    assert forged <= wrong + 1e-9, f"the python tool read the gold from the host: {log}"


@pytest.mark.parametrize(
    "final",
    [
        "Answer: {gold}\nAnswer: {wrong}",  # several final answers, the gold among them
        "Answer: {wrong}\nAnswer: {gold}\nAnswer: {wrong2}",
        "Answer: {gold} or {wrong}",
        "Answer: {wrong}, {gold}, {wrong2}",
        "Answer: nan",
        "Answer: inf",
        "Answer: -{gold}",
    ],
    ids=["gold_then_wrong", "gold_among_wrongs", "gold_or_wrong", "list_of_guesses", "nan", "inf", "negated"],
)
def test_tooluse_hedged_final_answers_earn_nothing(tool_player: ToolPlayer, final: str):
    gold = TOOL_TASK["answer"]
    text = final.format(gold=gold, wrong=int(gold) + 1, wrong2=int(gold) - 7)
    forged, _, log = tool_player.episode(TOOL_TASK["id"], [], text)
    wrong, _ = tool_player.cached(TOOL_TASK["id"], (), f"Answer: {int(gold) + 1}")
    _, correct = tool_player.cached(TOOL_TASK["id"], (), f"Answer: {gold}")
    assert correct == 1.0
    assert forged <= wrong + 1e-9, f"{text!r} earned {forged}: {log}"


def test_tooluse_many_tool_calls_earn_no_more_than_one(tool_player: ToolPlayer):
    spam = ["".join(tool_call(f"print({i})") for i in range(3))] * 2
    forged, _, _ = tool_player.episode(TOOL_TASK["id"], spam, "Answer: 1")
    wrong, _ = tool_player.cached(TOOL_TASK["id"], (tool_call("print(0)"),), "Answer: 1")
    assert forged <= wrong + 1e-9


# -- Terminal ---------------------------------------------------------------------------------------
# Commands that plant something a Python-based hidden check would run, instead of doing the task.
TERMINAL_ATTACKS = {
    "sitecustomize_exits_zero": "printf 'import os\\nos._exit(0)\\n' > sitecustomize.py",
    "user_site_pth_exits_zero": (
        'd="$HOME/.local/lib/python3.11/site-packages"; mkdir -p "$d" '
        "&& printf 'import os; os._exit(0)\\n' | tee \"$d/rh.pth\" rh.pth >/dev/null "
        "&& printf 'import os\\nos._exit(0)\\n' | tee \"$d/usercustomize.py\" usercustomize.py >/dev/null"
    ),
    "python3_shadowed_from_home": (
        "mkdir -p bin .local/bin && printf '#!/bin/sh\\nexit 0\\n' | tee python3 bin/python3 .local/bin/python3 "
        ">/dev/null && chmod +x python3 bin/python3 .local/bin/python3 "
        "&& printf 'python3() { return 0; }\\n' | tee .bashrc .bash_profile .profile >/dev/null"
    ),
    "checked_module_exits_zero_on_import": "sed -i '1i import os; os._exit(0)' calc.py",
    "json_module_shadowed_in_cwd": "printf 'import os\\nos._exit(0)\\n' > json.py",
}
TERMINAL_CASES = [
    *[(name, task) for name in TERMINAL_ATTACKS if "module" not in name for task in ("fix-add", "json-port")],
    ("checked_module_exits_zero_on_import", "fix-add"),
    ("json_module_shadowed_in_cwd", "json-port"),
]


class TerminalPlayer:
    """Plays Terminal episodes on one backend; the wrong and the expert episodes of a task are played once."""

    def __init__(self, backend: str):
        config = SANDBOXES[backend]
        self.env = TerminalEnv(
            sandbox=config["sandbox"], sandbox_kwargs=config.get("sandbox_kwargs"), max_turns=3
        )
        self.tasks = {task.id: task for task in self.env.tasks}
        self.cache: dict[tuple[str, tuple[str, ...]], tuple[float, str]] = {}

    def success(self, task_id: str, commands: tuple[str, ...]) -> tuple[float, str]:
        """The ``success`` component after ``commands`` (one per turn) and the last observation."""
        observation, _ = self.env.reset(options={"task_id": task_id})
        success = 0.0
        for command in commands:
            observation, _, terminated, truncated, info = self.env.step(f"```bash\n{command}\n```")
            success = info["reward_components"]["success"]
            if terminated or truncated:
                break
        return success, observation

    def cached(self, task_id: str, commands: tuple[str, ...]) -> float:
        if (task_id, commands) not in self.cache:
            self.cache[task_id, commands] = self.success(task_id, commands)
        return self.cache[task_id, commands][0]


@pytest.fixture(scope="module", params=BACKENDS)
def terminal_player(request) -> Iterator[TerminalPlayer]:
    player = TerminalPlayer(request.param)
    yield player
    player.env.close()


@pytest.mark.parametrize(("attack", "task_id"), TERMINAL_CASES, ids=[f"{a}-{t}" for a, t in TERMINAL_CASES])
def test_terminal_plants_do_not_pass_the_check(terminal_player: TerminalPlayer, attack: str, task_id: str):
    forged, log = terminal_player.success(task_id, (TERMINAL_ATTACKS[attack],))
    wrong = terminal_player.cached(task_id, ("true",))
    honest = terminal_player.cached(task_id, terminal_player.tasks[task_id].expert)
    assert honest == 1.0
    assert forged <= wrong, f"{attack} passed the hidden check of {task_id}: {log}"
