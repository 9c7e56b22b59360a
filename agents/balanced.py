"""Several servers behind one agent: least outstanding requests, one conversation stays on one server."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

from .base import Agent, AgentResponse, Message

#: Conversations remembered for affinity; the oldest are forgotten first (an episode is short-lived).
AFFINITY_SIZE = 100_000


def conversation_key(messages: list[Message]) -> str:
    """What stays the same across an episode's turns: the messages up to the first assistant turn."""
    head = []
    for message in messages:
        if message.get("role") == "assistant":
            break
        head.append({"role": message.get("role"), "content": message.get("content")})
    return json.dumps(head, sort_keys=True, ensure_ascii=False)


class BalancedAgent:
    """Sends each new conversation to the backend with the fewest requests in flight, later turns to the same one.

    Keeping an episode on one server lets its prefix cache (vLLM's) serve every later turn.
    """

    def __init__(self, agents: list[Agent], name: str | None = None):
        if not agents:
            raise ValueError("BalancedAgent needs at least one agent")
        self.agents = list(agents)
        self.name = name or agents[0].name
        self.outstanding = [0] * len(agents)
        self.served = [0] * len(agents)
        self._affinity: OrderedDict[str, int] = OrderedDict()

    def pick(self, messages: list[Message]) -> int:
        """The backend index for this conversation (sticky once chosen)."""
        key = conversation_key(messages)
        index = self._affinity.get(key)
        if index is None:
            index = min(range(len(self.agents)), key=lambda i: (self.outstanding[i], self.served[i]))
            self._affinity[key] = index
            if len(self._affinity) > AFFINITY_SIZE:
                self._affinity.popitem(last=False)
        else:
            self._affinity.move_to_end(key)
        return index

    async def act(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> AgentResponse:
        """Forward to the chosen backend, counting the request as outstanding while it runs."""
        index = self.pick(messages)
        self.outstanding[index] += 1
        self.served[index] += 1
        try:
            agent = self.agents[index]
            return await (agent.act(messages, tools=tools) if tools else agent.act(messages))
        finally:
            self.outstanding[index] -= 1

    async def check(self) -> None:
        """Check every backend that can be checked (a down server fails the check)."""
        await asyncio.gather(*(a.check() for a in self.agents if hasattr(a, "check")))

    async def aclose(self) -> None:
        """Close every backend."""
        await asyncio.gather(*(a.aclose() for a in self.agents))
