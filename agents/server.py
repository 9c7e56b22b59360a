"""A scripted OpenAI-protocol chat server on asyncio streams, for tests and throughput benchmarks.

It speaks enough HTTP/1.1 (keep-alive, Content-Length and chunked request bodies) and enough of the OpenAI
API (``GET /v1/models``, ``POST /v1/chat/completions`` with or without ``stream``) for the official
``openai`` client, answers from a script, and can inject latency and faults (HTTP errors, hangs, dropped
connections) so that retry and timeout paths are tested against real sockets rather than mocks.

Run it by hand with ``python -m aligngym.agents.server --port 8001 --latency 0.1 --reply "42"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .chat_wire import as_message, stream_events, text_of, token_logprob, tokenize, vllm_token_ids
from .http import HTTPError, HTTPRequest, read_request, write_chunked, write_drip, write_error, write_response

Message = dict[str, Any]
#: A list of replies chosen by turn, or ``(messages, request) -> str | dict`` (a dict is the full message).
Responder = Sequence[str] | Callable[[list[Message], dict[str, Any]], Any]
#: One per-request action: ``{"status": 500}``, ``{"hang": 2.0}``, ``{"close": True}``, ``{"drip": 0.5}``,
#: ``{"huge": 200_000_000}`` or ``None`` (normal).
Fault = dict[str, Any] | None


class ScriptedChatServer:
    """An OpenAI-compatible chat server whose replies come from a script, with optional latency and faults.

    ``responder`` as a list picks the reply by the number of assistant messages already in the request's
    ``messages`` (the turn index within that conversation), clamped to the last entry, so concurrent
    conversations each get the script from the start. As a callable it gets ``(messages, request)`` and
    returns a string (the content) or a dict (the whole assistant message, e.g. with ``tool_calls``; an
    optional ``finish_reason`` key sets the choice's). It may be a coroutine function.

    ``faults`` are consumed one per request in arrival order (any path) until exhausted; then requests are
    served normally. ``hang`` sleeps first and then serves the request, ``close`` drops the connection
    without an answer, ``status`` answers that HTTP error (with ``message`` and ``headers`` if given),
    ``drip`` sends a 200 head and then one byte of body every that many seconds, never finishing, and ``huge``
    answers a well-formed completion whose content is that many bytes, sent chunked as it is generated.
    ``latency_s`` delays every chat completion (not the models list) without blocking the loop.
    ``requests`` counts requests received, faulty ones included; ``last_request`` is the last chat body;
    ``in_flight`` is how many are being answered now and ``peak_in_flight`` the most at once (back-pressure).

    ``tokenizer`` (e.g. the tiny model's) makes the server stand in for vLLM, which cannot run on this CPU
    machine: a request with vLLM's ``return_token_ids`` gets ``prompt_token_ids`` (the tokenizer's chat
    template applied to the messages and tools) on the completion and ``token_ids`` on each choice (the reply's
    ids, ending with the end-of-turn token unless cut by ``max_tokens``), and ``logprobs`` then has one entry
    per id. A responder's dict may give the sampled ``token_ids`` itself, its content then being their
    decoding, as a sampler's is. Without a tokenizer the parameter is ignored, as OpenAI and older vLLM do;
    streamed replies carry no ids.
    """

    def __init__(
        self,
        responder: Responder,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "scripted",
        faults: Iterable[Fault] | None = None,
        tokenizer: Any = None,
    ):
        if not callable(responder):
            responder = list(responder)
            if not responder or not all(isinstance(r, str) for r in responder):
                raise ValueError("responder must be a non-empty list of strings or a callable")
        self.responder = responder
        self.latency_s = latency_s
        self.host = host
        self.port = port
        self.model = model
        self.faults = faults
        self.tokenizer = tokenizer
        self.requests = 0
        self.in_flight = self.peak_in_flight = 0
        self.last_request: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def faults(self) -> Iterator[Fault] | None:
        """The pending fault actions (assign any iterable to replace them)."""
        return self._faults

    @faults.setter
    def faults(self, faults: Iterable[Fault] | None) -> None:
        self._faults = iter(faults) if faults is not None else None

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` of this server, e.g. ``http://127.0.0.1:8001/v1``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> ScriptedChatServer:
        """Listen on ``host:port`` in the running loop; ``port=0`` picks a free port (see ``base_url``)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop open connections (hanging requests included)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> ScriptedChatServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[ScriptedChatServer]:
        """Serve from a background thread with its own event loop for the duration of the ``with`` block."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # e.g. port in use: re-raised in the caller's thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=main, name=f"ScriptedChatServer:{self.port}", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except HTTPError as err:
                    write_error(writer, err, keep_alive=False)
                    await writer.drain()
                    break
                if request is None or not await self._handle(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # stop() cancels connections; ending quietly keeps Python 3.11's stream callback from logging it
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _handle(self, request: HTTPRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection stays open."""
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request, writer)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: HTTPRequest, writer: asyncio.StreamWriter) -> bool:
        fault = next(self._faults, None) if self._faults is not None else None
        if fault:
            if fault.get("hang"):
                await asyncio.sleep(float(fault["hang"]))
            if fault.get("close"):
                return False
            if fault.get("drip"):
                await write_drip(writer, float(fault["drip"]))
                return False
            if fault.get("huge"):
                await self._huge(writer, int(fault["huge"]))
                return False
            if fault.get("status"):
                status = int(fault["status"])
                message = fault.get("message", f"injected fault: HTTP {status}")
                type_ = "server_error" if status >= 500 else "invalid_request_error"
                err = HTTPError(status, message, type_, fault.get("headers"))
                write_error(writer, err, request.keep_alive)
                await writer.drain()
                return request.keep_alive
        try:
            await self._route(request, writer)
        except HTTPError as err:
            write_error(writer, err, request.keep_alive)
        await writer.drain()
        return request.keep_alive

    async def _route(self, request: HTTPRequest, writer: asyncio.StreamWriter) -> None:
        path = request.path.rstrip("/")
        if path == "/v1/chat/completions":
            self._require(request, "POST")
            await self._chat(request, writer)
        elif path == "/v1/models":
            self._require(request, "GET")
            body = {"object": "list", "data": [self._model_card()]}
            write_response(writer, 200, json.dumps(body).encode(), request.keep_alive)
        elif path.startswith("/v1/models/"):
            self._require(request, "GET")
            if path[len("/v1/models/") :] != self.model:
                raise HTTPError(404, f"The model `{path[len('/v1/models/') :]}` does not exist.")
            write_response(writer, 200, json.dumps(self._model_card()).encode(), request.keep_alive)
        elif path == "/health":
            write_response(writer, 200, b"{}", request.keep_alive)
        else:
            raise HTTPError(404, f"Invalid URL ({request.method} {request.path})")

    @staticmethod
    def _require(request: HTTPRequest, method: str) -> None:
        if request.method != method:
            raise HTTPError(405, f"Method {request.method} not allowed for {request.path}; use {method}")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": 0, "owned_by": "aligngym"}

    # -- chat completions ---------------------------------------------------------------------------
    async def _chat(self, request: HTTPRequest, writer: asyncio.StreamWriter) -> None:
        try:
            body = json.loads(request.body)
        except ValueError:
            raise HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPError(400, "'messages' must be a non-empty list of message objects")
        messages = body["messages"]
        if not all(isinstance(m, dict) for m in messages):
            raise HTTPError(400, "'messages' must be a non-empty list of message objects")
        self.last_request = body
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        try:
            reply = self._reply(messages, body)
            if inspect.isawaitable(reply):
                reply = await reply
            message, finish_reason = as_message(reply)
            sampled = message.pop("token_ids", None)
            if sampled is not None:
                if self.tokenizer is None:
                    raise ValueError("it gave token_ids but the server has no tokenizer to decode them")
                message["content"] = self.tokenizer.decode(sampled, skip_special_tokens=True)
        except Exception as exc:  # a broken test responder should surface as a server error, not a hang
            raise HTTPError(500, f"responder failed: {type(exc).__name__}: {exc}", "server_error") from None

        ids = prompt_ids = None
        if self.tokenizer is not None and body.get("return_token_ids") and not body.get("stream"):
            try:
                prompt_ids, ids, finish_reason = vllm_token_ids(
                    self.tokenizer, messages, body, message, sampled, finish_reason
                )
            except Exception as exc:  # a template or tokenizer error is the server's, answered as such
                raise HTTPError(
                    500, f"tokenizer failed: {type(exc).__name__}: {exc}", "server_error"
                ) from None
            tokens = [self.tokenizer.decode([i]) for i in ids]
        else:
            tokens = tokenize(message["content"]) if isinstance(message.get("content"), str) else []
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and 0 < limit < len(tokens):
                tokens = tokens[:limit]
                message["content"] = "".join(tokens)
                finish_reason = "length"
        if finish_reason is None:
            finish_reason = "tool_calls" if message.get("tool_calls") else "stop"
        if prompt_ids is not None:
            prompt_tokens = len(prompt_ids)
        else:
            prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in messages)
        n = max(1, int(body.get("n") or 1))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens) * n,
            "total_tokens": prompt_tokens + len(tokens) * n,
        }
        top = int(body.get("top_logprobs") or 0)
        logprobs = [token_logprob(t, i, top) for i, t in enumerate(tokens)] if body.get("logprobs") else None
        header = {
            "id": f"chatcmpl-{next(self._ids):012x}",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
        }
        if body.get("stream"):
            events = stream_events(header, message, tokens, logprobs, finish_reason, n, usage, body)
            self._write_stream(writer, events, request.keep_alive)
            return
        choice_logprobs = {"content": logprobs, "refusal": None} if logprobs is not None else None
        choices = [
            {"index": i, "message": message, "logprobs": choice_logprobs, "finish_reason": finish_reason}
            for i in range(n)
        ]
        completion = {**header, "object": "chat.completion", "choices": choices, "usage": usage}
        if ids is not None:  # where vLLM puts them
            completion["prompt_token_ids"] = prompt_ids
            for choice in choices:
                choice["token_ids"] = ids
        write_response(writer, 200, json.dumps(completion).encode(), request.keep_alive)

    async def _huge(self, writer: asyncio.StreamWriter, size: int) -> None:
        """A valid completion with ``size`` bytes of content, generated and sent 1 MiB at a time."""
        head = json.dumps({"id": f"chatcmpl-{next(self._ids):012x}", "object": "chat.completion"})[:-1]
        step = 1 << 20
        parts = itertools.chain(
            [head.encode() + b', "choices": [{"index": 0, "message": {"role": "assistant", "content": "'],
            (b"x" * min(step, size - i) for i in range(0, size, step)),
            [b'"}, "finish_reason": "stop"}], "created": 0, "model": "%s"}' % self.model.encode()],
        )
        await write_chunked(writer, parts)

    def _reply(self, messages: list[Message], body: dict[str, Any]) -> Any:
        if callable(self.responder):
            return self.responder(messages, body)
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        return self.responder[min(turn, len(self.responder) - 1)]

    def _write_stream(self, writer: asyncio.StreamWriter, events: list[Any], keep_alive: bool) -> None:
        # All events go out in one write: the stream shape is what clients parse, pacing adds nothing here.
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        out = [head.encode("latin-1")]
        for event in events:
            data = b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"
            out.append(b"%x\r\n%s\r\n" % (len(data), data))
        out.append(b"0\r\n\r\n")
        writer.write(b"".join(out))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: serve scripted replies until interrupted."""
    parser = argparse.ArgumentParser(description="Serve scripted replies over the OpenAI chat API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed on start)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat completion")
    parser.add_argument("--model", default="scripted", help="model id reported by /v1/models")
    parser.add_argument(
        "--reply", action="append", help="reply for the next assistant turn (repeat for later turns)"
    )
    args = parser.parse_args(argv)
    server = ScriptedChatServer(
        args.reply or ["OK"], latency_s=args.latency, host=args.host, port=args.port, model=args.model
    )

    async def serve() -> None:
        async with server:
            print(f"serving model {server.model!r} at {server.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
