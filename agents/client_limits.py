"""Limits the HTTP client alone does not give: a total deadline per request and a cap on the reply's size.

The client's ``timeout`` bounds each read, so a server that drips one byte at a time never trips it; and it
reads a reply of any size into memory. ``LimitedTransport`` wraps the client's transport: each attempt
(headers and body) must finish within ``deadline_s`` or it fails as a timeout (retried like one), and a body
over ``max_bytes`` stops being read and raises ``ReplyTooLarge`` (not retried: the server would send it again).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import Any

import openai

#: A chat reply is text; 16 MiB is far more than any real one and far less than a memory problem.
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024


def _http_module() -> Any:
    """The HTTP library the installed ``openai`` client is built on (``httpx`` or its successor)."""
    base = next(c for c in openai.DefaultAsyncHttpxClient.__mro__ if not c.__module__.startswith("openai"))
    return importlib.import_module(base.__module__.split(".")[0])


httpx = _http_module()


class ReplyTooLarge(openai.OpenAIError):
    """The server's reply passed the agent's ``max_reply_bytes``."""


class _LimitedStream(httpx.AsyncByteStream):
    """A response body that must arrive before ``deadline`` and stay within ``max_bytes``."""

    def __init__(self, inner: Any, request: Any, deadline: float, limit_s: float, max_bytes: int):
        self.inner, self.request = inner, request
        self.deadline, self.limit_s, self.max_bytes = deadline, limit_s, max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        chunks = self.inner.__aiter__()
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= self.deadline:  # a chunk already buffered must not slip past the deadline
                    raise TimeoutError
                # A timer on this task, not wait_for: that starts a task per read.
                async with asyncio.timeout_at(self.deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise httpx.ReadTimeout(
                    f"reply not complete within the {self.limit_s:g}s deadline", request=self.request
                ) from None
            received += len(chunk)
            if received > self.max_bytes:
                raise ReplyTooLarge(
                    f"reply larger than {self.max_bytes} bytes (max_reply_bytes); not read further"
                )
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class LimitedTransport(httpx.AsyncBaseTransport):
    """A transport whose every request completes within ``deadline_s`` with at most ``max_bytes`` of body."""

    def __init__(self, deadline_s: float, max_bytes: int = DEFAULT_MAX_REPLY_BYTES, **transport_kwargs: Any):
        self.deadline_s, self.max_bytes = deadline_s, max_bytes
        self.inner = httpx.AsyncHTTPTransport(**transport_kwargs)

    async def handle_async_request(self, request: Any) -> Any:
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.inner.handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no reply headers within the {self.deadline_s:g}s deadline", request=request
            ) from None
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await response.aclose()
            raise ReplyTooLarge(f"reply of {length} bytes is over max_reply_bytes ({self.max_bytes})")
        response.stream = _LimitedStream(response.stream, request, deadline, self.deadline_s, self.max_bytes)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def limited_http_client(deadline_s: float, max_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> Any:
    """The ``openai`` client's default HTTP client, with a ``LimitedTransport`` under it."""
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    transport = LimitedTransport(deadline_s, max_bytes, limits=DEFAULT_CONNECTION_LIMITS)
    return openai.DefaultAsyncHttpxClient(transport=transport)
