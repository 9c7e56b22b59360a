"""The agent contract: an async policy that answers a chat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]


@dataclass
class AgentResponse:
    """One assistant turn: its text and, where the backend knows them, its exact prompt and generated tokens.

    ``prompt_ids`` are the ids the backend sampled from (the chat template applied), ``token_ids`` the ids it
    generated (ending with the end-of-turn token when the turn ended on it) and ``logprobs`` one per generated
    id. Each is ``None`` when the backend does not say; none is ever re-tokenised text.
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    #: Native tool calls (OpenAI wire format: id, type, function{name, arguments}); empty for plain text.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_ids: list[int] | None = None


@runtime_checkable
class Agent(Protocol):
    """A policy: given the chat so far (OpenAI-style message dicts), produce the next assistant message."""

    name: str

    async def act(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> AgentResponse:
        """Return the next assistant turn for ``messages``; ``tools`` are OpenAI-format schemas it may call."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads or models held by the agent."""
        ...


class AgentError(RuntimeError):
    """The backend failed for good (after its retries); the rollout records the episode as failed."""
