"""Terminal-v0's structured checks (``expect``): facts read out of the sandbox, judged here on the host.

A check must not be forgeable by anything the agent left in the working directory. So no agent-written
program takes part in reading state: an isolated probe (``_terminal_probe.py``: ``python -I``, environment
cleared, links never followed, git on a clean copy of the repository) prints facts, and the expected values
stay on the host, compared as plain data. Only ``python`` items run the agent's code, in a run of their own
whose printed return values are compared here, so that code can at most compute the right answers. Runs
print Python literals, read with ``ast.literal_eval`` (which evaluates nothing): importing ``json`` in the
sandbox would cost more than the rest of a check where the image's standard library has no bytecode.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from aligngym.sandboxes.base import RunResult, Sandbox, SandboxError

#: The probe program (builtin modules only); a run's code is it plus the call ``main(...)``.
PROBE_SOURCE = Path(__file__).with_name("_terminal_probe.py").read_text("utf-8")
#: Largest file or command output a check reads (a bigger one matches nothing).
MAX_BYTES = 1 << 16
_CALLS_MARK = "\x1ealigngym-calls:"
# The one run that imports the agent's module; the host appends ``main(module, calls)``. Whatever it
# prints, only the values the host expects pass; exact builtin types only, so no subclass's __repr__ or
# __eq__ can stand in for a value.
_CALLS_SOURCE = f"""import os, sys


def plain(value):
    kind = type(value)
    if kind in (int, float, str, bool, bytes, type(None)):
        return value
    if kind in (list, tuple):
        return [plain(v) for v in value]
    if kind is dict:
        return {{plain(k): plain(v) for k, v in dict.items(value)}}
    raise TypeError(kind.__name__)


def main(module_name, calls):
    sys.path.insert(0, os.getcwd())  # explicitly, and only now: nothing of ours is imported from there
    results = []
    try:
        __import__(module_name)
        module = sys.modules[module_name]
    except BaseException as exc:
        module = exc
    for name, args in calls:
        try:
            if isinstance(module, BaseException):
                raise module
            results.append(("ok", plain(getattr(module, name)(*args))))
        except BaseException as exc:
            results.append(("raised", type(exc).__name__))
    sys.stdout.write({_CALLS_MARK!r} + repr(results) + "\\n")
"""
_CONTENT_KEYS = frozenset({"text", "stripped", "json", "match"})
_PATH_KEYS = _CONTENT_KEYS | {"exists", "entries", "mode", "executable"}
_GIT_KEYS = _CONTENT_KEYS | {"exit"}
_MODULE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_OCTAL_MODE = re.compile(r"^[0-7]{3,4}$")


# -- the task field ---------------------------------------------------------------------------------------
def parse_expect(value: Any, label: str) -> tuple[dict[str, Any], ...]:
    """Validate a task's ``expect`` list (see ``TerminalEnv``); a ``ValueError`` names the task and item."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{label}: 'expect' must be a non-empty list of items")
    return tuple(_parse_item(item, f"{label}: expect[{i}]") for i, item in enumerate(value))


def _parse_item(item: Any, label: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"{label}: expected a mapping, got {type(item).__name__}")
    item = dict(item)
    subjects = [k for k in ("path", "git", "python") if k in item]
    if len(subjects) != 1:
        raise ValueError(f"{label}: name exactly one of 'path', 'git' or 'python'")
    subject = subjects[0]
    allowed = {"path": _PATH_KEYS, "git": _GIT_KEYS, "python": {"calls"}}[subject]
    if unknown := sorted(set(item) - allowed - {subject}):
        raise ValueError(
            f"{label}: unknown key(s) {', '.join(unknown)}; a {subject!r} item takes {sorted(allowed)}"
        )
    {"path": _check_path_item, "git": _check_git_item, "python": _check_python_item}[subject](item, label)
    for key in ("text", "stripped", "match"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"{label}: {key!r} must be a string")
    if "match" in item:
        try:
            re.compile(item["match"])
        except re.error as exc:
            raise ValueError(f"{label}: 'match' is not a regular expression: {exc}") from None
    return item


def _check_path_item(item: dict[str, Any], label: str) -> None:
    path = item["path"]
    parts = PurePosixPath(path).parts if isinstance(path, str) else ()
    if not isinstance(path, str) or not path or "\x00" in path or path.startswith("/") or ".." in parts:
        raise ValueError(f"{label}: 'path' is relative to the working directory, without '..', got {path!r}")
    exists = item.get("exists", True)
    if not (isinstance(exists, bool) or exists in ("file", "dir")):
        raise ValueError(f"{label}: 'exists' is true, false, 'file' or 'dir', got {exists!r}")
    if exists is False and len(item) > 2:
        raise ValueError(f"{label}: a path expected absent takes nothing else")
    if "entries" in item and (_CONTENT_KEYS & item.keys() or exists == "file"):
        raise ValueError(f"{label}: 'entries' is for a directory, not with file contents")
    if "entries" in item and not (
        isinstance(item["entries"], list) and all(isinstance(e, str) for e in item["entries"])
    ):
        raise ValueError(f"{label}: 'entries' must be a list of names")
    if "mode" in item and not (isinstance(item["mode"], str) and _OCTAL_MODE.match(item["mode"])):
        raise ValueError(f"{label}: 'mode' is octal permission bits as a string like '600'")
    if "executable" in item and not isinstance(item["executable"], bool):
        raise ValueError(f"{label}: 'executable' must be true or false")


def _check_git_item(item: dict[str, Any], label: str) -> None:
    args = item["git"]
    if not (isinstance(args, list) and args and all(isinstance(a, str) for a in args)):
        raise ValueError(f"{label}: 'git' is a list of arguments, such as ['log', '-1']")
    if args[0].startswith("-"):
        raise ValueError(f"{label}: 'git' starts with the subcommand; options before it are ours")
    if "exit" in item and (not isinstance(item["exit"], int) or isinstance(item["exit"], bool)):
        raise ValueError(f"{label}: 'exit' must be an integer")


def _check_python_item(item: dict[str, Any], label: str) -> None:
    if not (isinstance(item["python"], str) and _MODULE.match(item["python"])):
        raise ValueError(f"{label}: 'python' is a module name, such as 'calc'")
    calls = item.get("calls")
    if not (isinstance(calls, list) and calls) or not all(
        isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], list)
        for c in calls
    ):
        raise ValueError(f"{label}: 'calls' is a list of [function, [arguments...], expected result]")


# -- judging ---------------------------------------------------------------------------------------------
async def expectations_hold(sandbox: Sandbox, expect: Sequence[Mapping[str, Any]], timeout: float) -> bool:
    """Whether every item holds; state items are read first, ``python`` items (agent code) run last."""
    state = [item for item in expect if "python" not in item]
    facts = await _state_facts(sandbox, state, timeout) if state else ({}, [])
    if facts is None:
        return False
    path_facts, git_facts = facts[0], iter(facts[1])
    for item in state:
        if "path" in item and not path_holds(item, path_facts.get(item["path"]) or {}):
            return False
        if "git" in item and not git_holds(item, next(git_facts, None) or {}):
            return False
    for item in expect:
        if "python" in item and not await _calls_hold(sandbox, item, timeout):
            return False
    return True


async def _state_facts(
    sandbox: Sandbox, items: Sequence[Mapping[str, Any]], timeout: float
) -> tuple[dict[str, Any], list[Any]] | None:
    """Facts for path and git items: contents via ``read_bytes``, the rest from the probe (None: it failed).

    ``read_bytes`` reads on the host (local) or in the docker executor: no run at all, links followed only
    while they stay inside the working directory, FIFOs and devices refused. What it cannot tell (absence,
    listings, modes, what a link itself is, git) the probe reads, one isolated run for all of it.
    """
    probed = sorted({item["path"] for item in items if "path" in item and not _content_only(item)})
    direct = {item["path"] for item in items if _content_only(item)} - set(probed)
    commands = [item["git"] for item in items if "git" in item]
    path_facts = await asyncio.to_thread(lambda: {path: _read_file(sandbox, path) for path in sorted(direct)})
    if not (probed or commands):
        return path_facts, []
    program = f"{PROBE_SOURCE}\nmain({probed!r}, {commands!r}, {MAX_BYTES})\n"
    facts = _literal_output(await sandbox.arun(program, "python", timeout=timeout, isolated=True))
    if not (
        isinstance(facts, dict)
        and isinstance(facts.get("paths"), dict)
        and isinstance(facts.get("git"), list)
    ):
        return None
    return {**path_facts, **facts["paths"]}, facts["git"]


def _content_only(item: Mapping[str, Any]) -> bool:
    """Whether a path item asks only about a file's content (``read_bytes`` can tell)."""
    return (
        "path" in item
        and item.get("exists", True) in (True, "file")
        and bool(_CONTENT_KEYS & item.keys())
        and item.keys() <= _CONTENT_KEYS | {"path", "exists"}
    )


def _read_file(sandbox: Sandbox, path: str) -> dict[str, Any]:
    try:
        data = sandbox.read_bytes(path)
    except FileNotFoundError:
        return {"type": "missing"}
    except (SandboxError, OSError):  # a link out of the working directory, a FIFO, a device, too large
        return {"type": "blocked"}
    return {"type": "file", "data": data if len(data) <= MAX_BYTES else None}


def path_holds(item: Mapping[str, Any], fact: Mapping[str, Any]) -> bool:
    """Whether a ``fact`` about a path (from ``read_bytes`` or the probe) meets ``item``."""
    kind = fact.get("type")
    exists = item.get("exists", True)
    if exists is False:
        return kind == "missing"
    if kind not in ("file", "dir"):
        return False  # missing, behind a link, a link itself, a FIFO or device: nothing a goal asks for
    wanted = exists if exists in ("file", "dir") else None
    wanted = wanted or ("file" if _CONTENT_KEYS & item.keys() else "dir" if "entries" in item else None)
    mode = fact.get("mode")
    return (
        (wanted is None or kind == wanted)
        and ("mode" not in item or mode == int(item["mode"], 8))
        and ("executable" not in item or (isinstance(mode, int) and bool(mode & 0o100)) == item["executable"])
        and ("entries" not in item or fact.get("entries") == sorted(item["entries"]))
        and content_holds(item, fact.get("data"))
    )


def git_holds(item: Mapping[str, Any], fact: Mapping[str, Any]) -> bool:
    """Whether a git command's exit status and stdout meet ``item``."""
    exit_code = fact.get("exit")
    return (
        exit_code is not None and exit_code == item.get("exit", 0) and content_holds(item, fact.get("stdout"))
    )


def content_holds(item: Mapping[str, Any], data: Any) -> bool:
    """Whether ``data`` (bytes) meets the item's content keys (true when it has none)."""
    if not _CONTENT_KEYS & item.keys():
        return True
    if not isinstance(data, bytes):
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    # ``text`` compares as the shell's "$(cat file)" does: trailing newlines do not count.
    if "text" in item and text.rstrip("\n") != item["text"].rstrip("\n"):
        return False
    if "stripped" in item and "".join(text.split()) != "".join(item["stripped"].split()):
        return False
    if "match" in item and not re.fullmatch(item["match"], text.rstrip("\n"), re.DOTALL):
        return False
    if "json" in item:
        try:
            return same_data(json.loads(text), item["json"])
        except ValueError:
            return False
    return True


def same_data(got: Any, want: Any) -> bool:
    """Equality of JSON values, with booleans distinct from numbers (``True`` is not ``1``)."""
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and got == want
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_data, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_data(got[k], want[k]) for k in want)
        )
    return type(got) is type(want) and got == want


async def _calls_hold(sandbox: Sandbox, item: Mapping[str, Any], timeout: float) -> bool:
    """Import the agent's module in a run of its own; each call's printed result must be the expected one."""
    calls = item["calls"]
    program = f"{_CALLS_SOURCE}\nmain({item['python']!r}, {[(name, args) for name, args, _ in calls]!r})\n"
    got = _literal_output(await sandbox.arun(program, "python", timeout=timeout, isolated=True), _CALLS_MARK)
    if not isinstance(got, list) or len(got) != len(calls):
        return False
    return all(
        isinstance(g, list | tuple) and len(g) == 2 and g[0] == "ok" and same_data(g[1], want)
        for g, (_, _, want) in zip(got, calls, strict=True)
    )


def _literal_output(result: RunResult, mark: str = "") -> Any:
    """The literal on the last stdout line (after ``mark``); None when the run failed or printed none.

    Without a mark the program is ours and must have exited 0; with one it ran the agent's code, whose exit
    status means nothing (only the values printed are judged).
    """
    if not mark and not result.ok:
        return None
    # split("\n"), not splitlines(): that would also split at the mark's \x1e.
    lines = [line for line in result.stdout.split("\n") if line.startswith(mark) and line.strip()]
    try:
        return ast.literal_eval(lines[-1][len(mark) :]) if lines else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
