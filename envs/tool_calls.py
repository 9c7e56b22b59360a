"""Tool calls from assistant messages: native OpenAI ``tool_calls`` or Hermes-style ``<tool_call>`` text.

Parsing never raises on model output: a call that cannot be understood becomes a ``ToolCall`` with
``error`` set, which the environment answers with an error message and counts as malformed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
#: Largest accepted arguments text; a bigger call is refused before any JSON parsing.
MAX_ARGUMENT_CHARS = 64_000
#: Most calls acted on per message; later ones are answered with an error (bounds work per turn).
MAX_CALLS = 8
# Models often wrap the JSON in a markdown fence inside the tags.
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


@dataclass
class ToolCall:
    """One requested call: ``name`` and ``arguments``, or ``error`` saying why it is malformed."""

    id: str
    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the call parsed (its tool and arguments are checked separately)."""
        return self.error is None


def has_text_calls(text: str) -> bool:
    """Whether ``text`` tries to call a tool with ``<tool_call>`` tags (well-formed or not)."""
    return OPEN_TAG in text


def parse_text_calls(text: str, id_prefix: str = "call") -> list[ToolCall]:
    """The ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` calls in ``text`` (``MAX_CALLS + 1`` at most)."""
    calls: list[ToolCall] = []
    pos = 0
    # One call past MAX_CALLS is kept so the model is told it wrote too many; thousands of tags cost nothing.
    while len(calls) <= MAX_CALLS and (start := text.find(OPEN_TAG, pos)) != -1:
        call_id = f"{id_prefix}_{len(calls)}"
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        if end == -1:
            calls.append(ToolCall(call_id, error=f"{OPEN_TAG} is never closed with {CLOSE_TAG}"))
            break
        body = text[body_start:end]
        pos = end + len(CLOSE_TAG)
        if OPEN_TAG in body:
            calls.append(ToolCall(call_id, error=f"nested {OPEN_TAG} tags; write one JSON object per tag"))
            # Skip the outer closing tag too, so the nested pair counts as one malformed call.
            if text.startswith(CLOSE_TAG, pos):
                pos += len(CLOSE_TAG)
            continue
        calls.append(_from_text(call_id, body))
    return calls


def _from_text(call_id: str, body: str) -> ToolCall:
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if len(body) > MAX_ARGUMENT_CHARS:
        return ToolCall(
            call_id, error=f"tool call is {len(body)} characters; the limit is {MAX_ARGUMENT_CHARS}"
        )
    try:
        data = json.loads(body)
    except ValueError as exc:
        return ToolCall(call_id, error=f"tool call is not valid JSON ({exc})")
    if not isinstance(data, dict):
        return ToolCall(call_id, error='tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(call_id, error='tool call needs a "name" string')
    # Llama-style calls say "parameters"; both mean the same.
    arguments = data.get("arguments", data.get("parameters", {}))
    return _with_arguments(call_id, name, arguments)


def parse_native_calls(tool_calls: Any) -> list[ToolCall]:
    """OpenAI ``tool_calls`` entries; ``function.arguments`` is a JSON string (or, non-standard, a dict)."""
    if not isinstance(tool_calls, list):
        return [ToolCall("call_0", error="tool_calls must be a list")]
    calls = []
    for i, raw in enumerate(tool_calls):
        raw = raw if isinstance(raw, dict) else {}
        call_id = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else f"call_{i}"
        function = raw.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            calls.append(ToolCall(call_id, error="tool call needs function.name"))
            continue
        calls.append(_with_arguments(call_id, function["name"], function.get("arguments")))
    return calls


def _with_arguments(call_id: str, name: str, arguments: Any) -> ToolCall:
    if arguments is None or arguments == "":
        arguments = {}
    if isinstance(arguments, str):
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return ToolCall(
                call_id,
                name,
                error=f"arguments are {len(arguments)} characters; the limit is {MAX_ARGUMENT_CHARS}",
            )
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            return ToolCall(call_id, name, error=f"arguments are not valid JSON ({exc})")
    if not isinstance(arguments, dict):
        return ToolCall(
            call_id, name, error=f"arguments must be a JSON object, got {type(arguments).__name__}"
        )
    return ToolCall(call_id, name, arguments)


def validate_arguments(parameters: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit a tool's JSON-schema ``parameters`` object, or None when they fit."""
    properties: dict[str, Any] = parameters.get("properties", {})
    for name in parameters.get("required", []):
        if name not in arguments:
            return f"missing required argument {name!r}"
    # Extra arguments are refused unless the schema allows them (``additionalProperties``: true or a
    # schema), as an MCP server's may; a function's schema never does.
    extra = parameters.get("additionalProperties", False)
    for name, value in arguments.items():
        if name not in properties and not extra:
            allowed = ", ".join(properties) or "none"
            return f"unexpected argument {name!r} (arguments: {allowed})"
        schema = properties.get(name, extra if isinstance(extra, dict) else {})
        problem = _type_problem(schema, value)
        if problem:
            return f"argument {name!r} {problem}"
    return None


def _type_problem(schema: dict[str, Any], value: Any) -> str | None:
    if value is None and schema.get("nullable"):
        return None
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']}"
    kinds = schema.get("type")
    if kinds is None:
        return None
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if not any(_is_type(value, kind) for kind in kinds):
        return f"must be {' or '.join(kinds)}, got {_json_type(value)}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            problem = _type_problem(schema["items"], item)
            if problem:
                return f"item {problem}"
    return None


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    expected = _JSON_TYPES.get(kind)
    if expected is None:
        return True  # a schema type we do not know: let the tool decide
    # JSON has no bool/int overlap: true is not a number (Python says it is).
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, expected)


def _json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return "null" if value is None else type(value).__name__
