"""An agent that asks any OpenAI-compatible chat server (OpenAI, vLLM, SGLang, Ollama, ...) for each turn."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import openai

from aligngym.agents.base import AgentError, AgentResponse, Message
from aligngym.agents.client_limits import DEFAULT_MAX_REPLY_BYTES, ReplyTooLarge, limited_http_client
from aligngym.agents.seeding import request_seed

# The client's first backoff delay (openai._constants.INITIAL_RETRY_DELAY); our scale is relative to it.
_CLIENT_INITIAL_RETRY_DELAY = 0.5


@dataclass
class ToolCallResponse(AgentResponse):
    """An assistant turn that calls tools (``tool_calls`` is set); kept as a name for ``isinstance`` checks."""


class _AsyncOpenAI(openai.AsyncOpenAI):
    """``AsyncOpenAI`` whose exponential backoff starts at ``retry_backoff_s`` instead of 0.5 s."""

    def __init__(self, *args: Any, retry_backoff_s: float = _CLIENT_INITIAL_RETRY_DELAY, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._backoff_scale = retry_backoff_s / _CLIENT_INITIAL_RETRY_DELAY

    def _calculate_retry_timeout(
        self, remaining_retries: int, options: Any, response_headers: Any = None
    ) -> float:
        delay = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        # A server's Retry-After is obeyed as sent; only our own backoff is rescaled.
        if response_headers is not None and (
            "retry-after" in response_headers or "retry-after-ms" in response_headers
        ):
            return delay
        return delay * self._backoff_scale


def _one_line(exc: BaseException) -> str:
    """The most specific cause of ``exc`` as ``Type: message`` on one line."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if cause is not exc else text


def _token_ids(value: Any) -> list[int] | None:
    """``value`` as token ids when it is a list of integers, else ``None`` (a server that does not say)."""
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return list(value)
    return None


def _status_message(exc: openai.APIStatusError) -> str:
    """The server's own error message (the client prefixes ``Error code: N - ``; the status is said already)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return " ".join(body["message"].split())
    return _one_line(exc)


class OpenAIAgent:
    """A policy served over the OpenAI chat-completions protocol.

    Retries are the ``openai`` client's own: ``max_retries`` attempts after the first, with exponential
    backoff from ``retry_backoff_s``, on connection errors (refused, dropped without an answer), timeouts,
    408/409/429 and 5xx answers. When they run out, ``act`` raises ``AgentError`` naming the URL and cause.
    ``timeout`` bounds each attempt as a whole (a server dripping bytes cannot stretch it), and a reply over
    ``max_reply_bytes`` is refused unread, as is one whose ``content`` is not a string.

    ``return_tokens`` asks the server for the exact prompt and generated token ids and the generated tokens'
    logprobs through vLLM's documented extra parameters (``return_token_ids``, vLLM >= 0.10.2, and
    ``logprobs``); the response's ``prompt_ids``/``token_ids``/``logprobs`` stay ``None`` where a server
    ignores them (OpenAI itself, older vLLM).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str = "EMPTY",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        logprobs: bool = False,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
        *,
        retry_backoff_s: float = _CLIENT_INITIAL_RETRY_DELAY,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        return_tokens: bool = False,
    ):
        if not timeout > 0 or max_reply_bytes < 1:
            raise ValueError(f"timeout and max_reply_bytes must be > 0, got {timeout!r}, {max_reply_bytes!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.logprobs = logprobs or return_tokens
        # Extra body keys a caller sets win over ours (e.g. return_token_ids=False for a server that rejects it).
        self.extra_body = (
            {"return_token_ids": True, **(extra_body or {})} if return_tokens else dict(extra_body or {})
        )
        self.return_tokens = return_tokens
        self.name = name or model
        self.retry_backoff_s = retry_backoff_s
        self.max_reply_bytes = max_reply_bytes
        self._client: _AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The client for the running event loop (pooled connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = _AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.api_key,
                timeout=self.timeout,
                max_retries=self.max_retries,
                retry_backoff_s=self.retry_backoff_s,
                http_client=limited_http_client(self.timeout, self.max_reply_bytes),
            )
            self._client_loop = loop
        return self._client

    async def act(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> AgentResponse:
        """Ask the server for the next assistant turn; a ``ToolCallResponse`` when the model calls tools."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.logprobs:
            kwargs["logprobs"] = True
        seed = request_seed()  # the episode engine's per-request seed (rollout --sampling-seed)
        if seed is not None:
            kwargs["seed"] = seed
        if tools:
            kwargs["tools"] = tools
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        try:
            completion = await self.client.chat.completions.create(**kwargs)
        except ReplyTooLarge as exc:
            raise AgentError(
                f"{self.base_url} sent a reply for model {self.model!r} that is too large: {exc}"
            ) from exc
        except openai.APIStatusError as exc:
            raise AgentError(
                f"{self.base_url} answered HTTP {exc.status_code} for model {self.model!r}: "
                f"{_status_message(exc)}{self._url_hint(exc.status_code)}"
            ) from exc
        except openai.APITimeoutError as exc:
            raise AgentError(
                f"{self.base_url} did not answer within {self.timeout:g}s "
                f"(tried {self.max_retries + 1} times) for model {self.model!r}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise AgentError(
                f"cannot reach {self.base_url} (tried {self.max_retries + 1} times): {_one_line(exc)}"
            ) from exc
        except openai.OpenAIError as exc:
            raise AgentError(f"request to {self.base_url} failed: {_one_line(exc)}") from exc
        if not completion.choices:
            raise AgentError(f"{self.base_url} returned no choices for model {self.model!r}")
        return self._response(completion)

    def _response(self, completion: Any) -> AgentResponse:
        choice = completion.choices[0]
        message = choice.message
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [t.logprob for t in choice.logprobs.content]
        usage = completion.usage
        if message.content is not None and not isinstance(message.content, str):
            raise AgentError(
                f"{self.base_url} sent a message content of type {type(message.content).__name__} for model "
                f"{self.model!r}; the chat protocol wants a string"
            )
        fields: dict[str, Any] = {
            "text": message.content or "",
            # vLLM answers return_token_ids with the generated ids on the choice and the prompt's on the
            # completion; the client keeps unknown fields as attributes. Absent or malformed: not known.
            "token_ids": _token_ids(getattr(choice, "token_ids", None)),
            "prompt_ids": _token_ids(getattr(completion, "prompt_token_ids", None)),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
            if usage is not None
            else {},
        }
        if message.tool_calls:
            return ToolCallResponse(**fields, tool_calls=[call.model_dump() for call in message.tool_calls])
        return AgentResponse(**fields)

    async def check(self) -> None:
        """Fail fast with a fix hint when the server is unreachable (``GET /models``, one retry at most)."""
        client = self.client.with_options(
            max_retries=min(self.max_retries, 1), timeout=min(self.timeout, 10.0)
        )
        hint = f"(start it, e.g. `vllm serve {self.model}`, or fix --base-url)"
        try:
            await client.models.list()
        except openai.APIStatusError as exc:
            raise AgentError(
                f"OpenAI-compatible server at {self.base_url} answered HTTP {exc.status_code} to GET /models: "
                f"{_status_message(exc)}{self._url_hint(exc.status_code) or ' ' + hint}"
            ) from exc
        except openai.OpenAIError as exc:
            raise AgentError(
                f"cannot reach OpenAI-compatible server at {self.base_url}: {_one_line(exc)} {hint}"
            ) from exc

    def _url_hint(self, status: int) -> str:
        """For a 404 from a base URL without ``/v1`` (OpenAI-compatible servers serve under it): the fix."""
        if status == 404 and not self.base_url.endswith("/v1"):
            return f" (did you mean --base-url {self.base_url}/v1 ?)"
        return ""

    async def aclose(self) -> None:
        """Close the HTTP client and its pooled connections."""
        client, loop = self._client, self._client_loop
        self._client = self._client_loop = None
        # A client opened in an earlier (now closed) loop cannot close its sockets from this one; drop it.
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()

    def __repr__(self) -> str:
        return f"OpenAIAgent(model={self.model!r}, base_url={self.base_url!r})"
