"""A scripted agent for tests: replies come from a list (by turn) or a function of the chat."""

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
