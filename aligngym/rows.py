"""The JSONL row format: one schema for every env, so files of different envs load together.

A row in the file (``encode_row``) has the same columns with the same JSON types whatever the env, backend or
outcome, because ``datasets.load_dataset("json", data_files=[...])`` fixes each column's Arrow type from the
first rows it reads and refuses any later file that differs (a struct with other keys, a value where the first
file had only nulls). So:

- env-specific objects (``info``, ``env_kwargs``) and the optional per-turn ``tokens`` are JSON text;
- ``reward_components`` is a list of ``{"name", "value"}``;
- every message has the keys ``role, content, name, tool_call_id, tool_calls`` (``""`` when the message has
  none; ``tool_calls`` is the JSON text of the list);
- a missing ``error``, ``agent`` or ``agent_id`` is ``""``, never null; ``success`` is a bool and
  ``success_defined`` says whether it means anything (false: the env has no notion of success, or the
  episode failed);
- ``env_package``, ``env_package_version`` and ``aligngym_version`` (which distribution the env came from,
  and which aligngym ran it) are always there, ``""`` in rows written before they were recorded.

``decode_row`` turns any row (this format, the one before it, or an in-memory ``asdict``) back into Python
values: dicts, ``None`` for what is missing, messages with only the keys they have. ``read_trajectories``
returns decoded rows; the format is documented in README.md ("Command line") and docs/design.md.

``row_identity`` reads what identifies a row (episode, seats, the run's settings) from a line in the writer's
own layout without parsing the rest, so ``--resume`` on a file of a million rows takes seconds.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, NamedTuple

#: Every message of a row has exactly these keys.
MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")
#: Row fields whose ``None`` is written as ``""``: an all-null column has no type a later file can match.
_NONE_AS_EMPTY = ("error", "agent", "agent_id")
#: Env-specific objects written as JSON text (their shapes differ from env to env).
_JSON_TEXT = ("info", "env_kwargs")
#: Where the env came from: text in every row, ``""`` when unknown (rows from before had none).
PROVENANCE = ("env_package", "env_package_version", "aligngym_version")


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _number(value: Any) -> float | None:
    """A float for the row (JSON ``1`` would make an int column that ``1.5`` in a later file cannot join)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def encode_message(message: Any) -> dict[str, str]:
    """A chat message with every key of ``MESSAGE_KEYS``; other keys are not kept (see the module docstring)."""
    message = message if isinstance(message, dict) else {"content": message}
    content = message.get("content")
    calls = message.get("tool_calls")
    return {
        "role": str(message.get("role") or ""),
        "content": content if isinstance(content, str) else "" if content is None else _text(content),
        "name": str(message.get("name") or ""),
        "tool_call_id": str(message.get("tool_call_id") or ""),
        "tool_calls": "" if calls is None else _text(calls),
    }


def decode_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the chat code uses it: ``role`` and ``content``, plus the optional keys it has."""
    out = dict(message)
    for key in ("name", "tool_call_id"):
        if out.get(key) == "":
            del out[key]
    calls = out.get("tool_calls")
    if calls == "" or (calls is None and "tool_calls" in out):
        del out["tool_calls"]
    elif isinstance(calls, str):
        out["tool_calls"] = json.loads(calls)
    return out


def encode_row(row: dict[str, Any]) -> dict[str, Any]:
    """The file form of a JSON-safe row (``_jsonable(asdict(trajectory))``, or a decoded row)."""
    row = decode_row(row)  # one path whatever form it comes in
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "tokens":
            continue  # written last, always
        if key in _JSON_TEXT:
            out[key] = _text(value if value is not None else {})
        elif key in _NONE_AS_EMPTY or key in PROVENANCE:
            out[key] = "" if value is None else str(value)
        elif key == "messages":
            out[key] = [encode_message(m) for m in value or []]
        elif key == "rewards":
            out[key] = [_number(r) for r in value or []]
        elif key in ("reward", "duration_s"):
            out[key] = _number(value)
        elif key == "reward_components":
            out[key] = [{"name": str(k), "value": _number(v)} for k, v in (value or {}).items()]
        elif key == "success":
            out["success"] = bool(value)
            out["success_defined"] = value is not None
        else:
            out[key] = value
    if "success" not in out:
        out["success"], out["success_defined"] = False, False
    for key in PROVENANCE:
        out.setdefault(key, "")
    out["tokens"] = "" if row.get("tokens") is None else _text(row["tokens"])
    return out


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """Python values for any row: this format, the one before it (dicts, nulls) or an ``asdict``; idempotent.

    Keys this version does not know are kept; ``tokens`` is left out when there are none (as rows were).
    """
    out = dict(row)
    for key in _JSON_TEXT:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key]) if out[key] else {}
    for key in _NONE_AS_EMPTY:
        if out.get(key) == "":
            out[key] = None
    if isinstance(out.get("tokens"), str):
        out["tokens"] = json.loads(out["tokens"]) if out["tokens"] else None
    if out.get("tokens", 0) is None:
        del out["tokens"]
    if isinstance(out.get("reward_components"), list):
        out["reward_components"] = {c["name"]: c["value"] for c in out["reward_components"]}
    if "messages" in out:
        out["messages"] = [decode_message(m) if isinstance(m, dict) else m for m in out["messages"] or []]
    for key in PROVENANCE:
        out.setdefault(key, "")
    if "success_defined" in out:
        defined = out.pop("success_defined")
        out["success"] = bool(out.get("success")) if defined else None
    if isinstance(out.get("episode"), int):
        # Rows from before --samples-per-prompt: every episode was its own prompt, played once.
        n = out.setdefault("samples_per_prompt", 1)
        out.setdefault("prompt_index", out["episode"] // n)
        out.setdefault("sample_index", out["episode"] % n)
    return out


def is_encoded(row: dict[str, Any]) -> bool:
    """Whether ``row`` is in this version's file form (else it comes from an earlier version)."""
    has_columns = all(key in row for key in ("success_defined", "samples_per_prompt", *PROVENANCE))
    return has_columns and isinstance(row.get("info"), str)


# -- a row's identity without parsing the row -------------------------------------------------------------
# The writer's own layout (``json.dumps`` of ``encode_row``: these keys in this order, ", " and ": " between
# them) as one regular expression over the whole line. It accepts strict JSON only (no raw control characters
# or unknown escapes in strings, no NaN), so a line it matches is a valid row whose fields are the groups it
# captures: message text such as '"episode": 5' sits inside an escaped string and cannot pass for a key.
_STR = r'"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+"'
_INT = r"-?(?:0|[1-9][0-9]{0,17})"  # json.loads makes these ints (and int() takes them whole)
_NUM = r"(?:-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]++)?+|null)"
_BOOL = r"(?:true|false)"


def _array(item: str) -> str:
    return rf"\[(?:{item}(?:, {item})*+)?+\]"


def _object(fields: tuple[tuple[str, str], ...]) -> str:
    return r"\{" + ", ".join(f'"{key}": {value}' for key, value in fields) + r"\}"


_ROW = re.compile(
    _object(
        (
            ("env_id", f"({_STR})"),
            ("episode", f"({_INT})"),
            ("seed", f"({_INT}|null)"),
            ("messages", _array(_object(tuple((key, _STR) for key in MESSAGE_KEYS)))),
            ("rewards", _array(_NUM)),
            ("reward", _NUM),
            ("terminated", _BOOL),
            ("truncated", _BOOL),
            ("info", _STR),
            ("error", _STR),
            ("reward_components", _array(_object((("name", _STR), ("value", _NUM))))),
            ("turns", _INT),
            ("agent", _STR),
            ("episode_id", _STR),
            ("duration_s", _NUM),
            ("agent_id", _STR),
            ("num_agents", f"({_INT})"),
            ("env_kwargs", f"({_STR})"),
            ("success", _BOOL),
            ("success_defined", _BOOL),
            ("prompt_index", _INT),
            ("sample_index", _INT),
            ("samples_per_prompt", f"({_INT})"),
            *((key, _STR) for key in PROVENANCE),
            ("tokens", _STR),
        )
    )
    + "\n?"
)


class RowIdentity(NamedTuple):
    """What tells a row's episode and run apart; ``env_kwargs`` is its JSON text, as in the file."""

    env_id: str
    episode: int
    seed: int | None
    num_agents: int
    env_kwargs: str
    samples_per_prompt: int


def row_identity(line: str) -> RowIdentity | None:
    """The identity of a line in the writer's exact layout (this version's form), read without parsing its
    messages; ``None`` for any other line, which the caller parses in full (``json.loads``)."""
    match = _ROW.fullmatch(line)
    if match is None:
        return None
    env_id, episode, seed, agents, env_kwargs, samples = match.groups()
    return RowIdentity(
        _string(env_id),
        int(episode),
        None if seed == "null" else int(seed),
        int(agents),
        _string(env_kwargs),
        int(samples),
    )


@lru_cache(maxsize=256)
def _string(literal: str) -> str:
    """A JSON string literal's value (a run's rows repeat the same few)."""
    return json.loads(literal)
