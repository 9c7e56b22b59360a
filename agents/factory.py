"""Build an agent from the CLI's or a config's words: a model name and, optionally, a server URL."""

from __future__ import annotations

from typing import Any

from .base import Agent


def build_agent(
    model: str,
    base_url: str | list[str] | None = None,
    *,
    temperature: float = 1.0,
    max_tokens: int | None = None,
    return_tokens: bool = False,
    **kwargs: Any,
) -> Agent:
    """An OpenAI-protocol agent when ``base_url`` is given, else ``model`` loaded locally (``tiny`` built in).

    Several base URLs give a ``BalancedAgent`` over one OpenAI-protocol agent per server. ``return_tokens``
    asks a server for the exact prompt and generated token ids and their logprobs; a local model always
    returns them.
    """
    if isinstance(base_url, list | tuple):
        urls = list(dict.fromkeys(base_url))
        if len(urls) > 1:
            from .balanced import BalancedAgent

            return BalancedAgent(
                [
                    build_agent(
                        model,
                        url,
                        temperature=temperature,
                        max_tokens=max_tokens,
                        return_tokens=return_tokens,
                        **kwargs,
                    )
                    for url in urls
                ]
            )
        base_url = urls[0] if urls else None
    if base_url:
        from .openai_agent import OpenAIAgent

        return OpenAIAgent(
            model=model,
            base_url=base_url,
            temperature=temperature,
            max_tokens=max_tokens,
            return_tokens=return_tokens,
            **kwargs,
        )
    from .local import SamplingConfig, TransformersAgent

    sampling = SamplingConfig(temperature=temperature)
    if max_tokens:
        sampling.max_new_tokens = max_tokens
    return TransformersAgent(model, sampling=sampling, **kwargs)


def resolve_agent(spec: Any, default: Agent | None = None) -> Agent | None:
    """An agent from what a config may say: an Agent, a model name, or ``{"model": ..., "base_url": ...}``.

    ``None`` (or ``"scripted"``) gives ``default``, which environments use for their built-in scripted judges.
    """
    if spec is None or spec == "scripted":
        return default
    if isinstance(spec, str):
        return build_agent(spec)
    if isinstance(spec, dict):
        if "model" not in spec:
            raise ValueError(f"an agent spec needs a 'model' key, got {sorted(spec)}")
        return build_agent(**spec)
    if hasattr(spec, "act"):
        return spec
    raise TypeError(f"cannot make an agent from {type(spec).__name__}; pass an Agent, a model name or a dict")
