"""Policies that act in environments: OpenAI-protocol client, local transformers, tiny model, scripted."""

from .base import Agent, AgentError, AgentResponse
from .factory import build_agent, resolve_agent
from .scripted import ScriptedAgent

__all__ = [
    "Agent",
    "AgentError",
    "AgentResponse",
    "BalancedAgent",
    "OpenAIAgent",
    "SamplingConfig",
    "ScriptedAgent",
    "ScriptedChatServer",
    "ToolCallResponse",
    "TransformersAgent",
    "build_agent",
    "resolve_agent",
]

# The heavy backends (openai, torch/transformers) load on first use, so `import aligngym` stays fast.
_LAZY = {
    "BalancedAgent": ".balanced",
    "OpenAIAgent": ".openai_agent",
    "ToolCallResponse": ".openai_agent",
    "ScriptedChatServer": ".server",
    "SamplingConfig": ".local",
    "TransformersAgent": ".local",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
