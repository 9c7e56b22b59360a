"""Build an agent from the CLI's or a config's words: a model name and, optionally, a server URL."""

from __future__ import annotations

from typing import Any

from .base import Agent


def build_agent(
    model: str,
    base_url: str | None = None,
    *,
    temperature: float = 1.0,
    max_tokens: int | None = None,
    **kwargs: Any,
) -> Agent:
    """An OpenAI-protocol agent when ``base_url`` is given, else ``model`` loaded locally (``tiny`` built in)."""
    if base_url:
        from .openai_agent import OpenAIAgent

        return OpenAIAgent(
            model=model, base_url=base_url, temperature=temperature, max_tokens=max_tokens, **kwargs
        )
    from .local import SamplingConfig, TransformersAgent

    sampling = SamplingConfig(temperature=temperature)
    if max_tokens:
        sampling.max_new_tokens = max_tokens
    return TransformersAgent(model, sampling=sampling, **kwargs)
