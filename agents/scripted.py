"""Agents that need no model: scripted replies for tests (a list by turn, or a function of the chat), and the
replay of a stored episode's replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aligngym.agents.base import AgentResponse, Message


class ScriptedAgent:
    """Replies from ``responses``: a list indexed by the number of assistant messages so far (clamped to the
    last entry), or a callable given the messages."""

    def __init__(self, responses: Sequence[str] | Callable[[list[Message]], str], name: str = "scripted"):
        if not callable(responses):
            responses = list(responses)
            if not responses:
                raise ValueError("ScriptedAgent needs at least one response")
        self.responses = responses
        self.name = name
        self.calls = 0

    async def act(self, messages: list[Message], tools: list[dict] | None = None) -> AgentResponse:
        """The scripted reply for this point of the conversation."""
        self.calls += 1
        if callable(self.responses):
            text = self.responses(messages)
        else:
            turn = sum(1 for m in messages if m.get("role") == "assistant")
            text = self.responses[min(turn, len(self.responses) - 1)]
        return AgentResponse(text=text, finish_reason="stop", usage={"completion_tokens": len(text.split())})

    async def aclose(self) -> None:
        """Nothing to release."""


class ReplayExhausted(RuntimeError):
    """The env asked for more turns than the stored episode has: its replay no longer fits."""


class ReplayAgent:
    """Replays the assistant messages of a stored chat in order (text and native ``tool_calls``), whatever it
    is shown: re-scoring an old episode with today's env (``aligngym eval --reverify``)."""

    def __init__(self, messages: Sequence[Message], name: str = "replay"):
        self.replies = [dict(m) for m in messages if m.get("role") == "assistant"]
        self.name = name
        self.calls = 0

    async def act(self, messages: list[Message], tools: list[dict] | None = None) -> AgentResponse:
        """The next stored assistant message; ``ReplayExhausted`` once they are all used."""
        if self.calls >= len(self.replies):
            raise ReplayExhausted(
                f"the env asked for turn {self.calls + 1}; the stored episode has {len(self.replies)}"
            )
        reply = self.replies[self.calls]
        self.calls += 1
        return AgentResponse(
            text=reply.get("content") or "",
            finish_reason="stop",
            tool_calls=list(reply.get("tool_calls") or []),
        )

    async def aclose(self) -> None:
        """Nothing to release."""
