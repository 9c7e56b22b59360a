"""The OpenAI chat-completion wire format as the scripted server writes it: messages, logprobs, SSE chunks.

``vllm_token_ids`` answers vLLM's ``return_token_ids`` extension from a real tokenizer, standing in for vLLM
(which cannot run on a CPU-only machine) so that token-faithful paths are tested end to end.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import Message

# Tokens keep their leading whitespace so that joining them gives back the text (as real tokenizers do).
_TOKEN_RE = re.compile(r"\s*\S+(?:\s+$)?")


def tokenize(text: str) -> list[str]:
    """Whitespace tokens of ``text`` that concatenate back to it; the server's notion of a token."""
    return _TOKEN_RE.findall(text)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def as_message(reply: Any) -> tuple[dict[str, Any], str | None]:
    """Normalise a responder's return value to an assistant message and an optional finish reason."""
    if isinstance(reply, str):
        return {"role": "assistant", "content": reply}, None
    if not isinstance(reply, dict):
        raise TypeError(f"responder returned {type(reply).__name__}; expected str or dict")
    message = dict(reply)
    finish_reason = message.pop("finish_reason", None)
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    if message.get("tool_calls"):
        message["tool_calls"] = [_tool_call(call, i) for i, call in enumerate(message["tool_calls"])]
    return message, finish_reason


def _tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    # Tests may write arguments as a dict and omit ids; the wire format needs a JSON string and an id.
    call = dict(call)
    call.setdefault("id", f"call_{index}")
    call.setdefault("type", "function")
    function = dict(call.get("function") or {})
    if not isinstance(function.get("arguments"), str):
        function["arguments"] = json.dumps(function.get("arguments") or {})
    call["function"] = function
    return call


def token_logprob(token: str, index: int, top: int) -> dict[str, Any]:
    # Deterministic, negative, varying values: plausible enough for parsers and for tests to compare.
    logprob = -0.05 * (1 + index % 7)
    entry = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
    if top > 0:
        alternatives = [(f"<alt{j}>", logprob - j) for j in range(1, top)]
        entry["top_logprobs"] = [
            {"token": t, "logprob": lp, "bytes": list(t.encode())}
            for t, lp in [(token, logprob), *alternatives]
        ]
    return entry


def stream_events(
    header: dict[str, Any],
    message: dict[str, Any],
    tokens: list[str],
    logprobs: list[dict[str, Any]] | None,
    finish_reason: str,
    n: int,
    usage: dict[str, int],
    body: dict[str, Any],
) -> list[Any]:
    """The SSE ``chat.completion.chunk`` sequence for a reply, ending with ``[DONE]``."""
    base = {**header, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }

    events: list[Any] = []
    for i in range(n):
        events.append(chunk(i, {"role": "assistant", "content": ""}))
        for k, token in enumerate(tokens):
            lp = {"content": [logprobs[k]], "refusal": None} if logprobs is not None else None
            events.append(chunk(i, {"content": token}, lp))
        if message.get("tool_calls"):
            calls = [{"index": j, **call} for j, call in enumerate(message["tool_calls"])]
            events.append(chunk(i, {"tool_calls": calls}))
        events.append(chunk(i, {}, None, finish_reason))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": usage})
    events.append(b"[DONE]")
    return events


def vllm_token_ids(
    tokenizer: Any,
    messages: list[Message],
    body: dict[str, Any],
    message: dict[str, Any],
    sampled: list[int] | None,
    finish_reason: str | None,
) -> tuple[list[int], list[int], str | None]:
    """Prompt ids, reply ids and finish reason as vLLM reports them; ``message`` is cut to ``max_tokens``.

    The prompt ids are the chat template (with the request's tools) applied to ``messages``; the reply's are
    ``sampled`` when the responder gave them, else its content's ids closed by the end-of-turn token.
    """
    template = {"tools": body["tools"]} if body.get("tools") else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = sampled
    if ids is None:
        # A sampler's turn ends on the end-of-turn token it drew (dropped from the text, kept in the ids).
        ids = tokenizer(message.get("content") or "", add_special_tokens=False)["input_ids"]
        ids = ids if finish_reason == "length" else [*ids, tokenizer.eos_token_id]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(ids):
        ids, finish_reason = ids[:limit], "length"
        if isinstance(message.get("content"), str):
            message["content"] = tokenizer.decode(ids, skip_special_tokens=True)
    return list(prompt_ids), list(ids), finish_reason
