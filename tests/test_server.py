"""The scripted OpenAI-protocol server, exercised with the official ``openai`` client over real sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time

import openai
import pytest

from aligngym.agents.server import ScriptedChatServer, tokenize

USER = [{"role": "user", "content": "what is six times seven"}]


def _client(srv: ScriptedChatServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=5.0, **kwargs)


@pytest.fixture
def server():
    with ScriptedChatServer(["first", "second answer", "third"]).run_in_thread() as srv:
        yield srv


def test_models_list(server):
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["scripted"]
    assert _client(server).models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError):
        _client(server).models.retrieve("other")


def test_reply_follows_assistant_turns_and_response_shape(server):
    client = _client(server)
    chat = list(USER)
    replies = []
    for _ in range(4):
        completion = client.chat.completions.create(model="scripted", messages=chat)
        replies.append(completion.choices[0].message.content)
        chat += [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": "and?"}]
    assert replies == ["first", "second answer", "third", "third"]  # clamped to the last entry

    completion = client.chat.completions.create(model="scripted", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 1
    assert completion.usage.total_tokens == 6
    assert server.last_request["model"] == "scripted"


def test_callable_responder_sees_messages_and_request():
    seen = []

    def echo(messages, request):
        seen.append(request["temperature"])
        return messages[-1]["content"].upper()

    with ScriptedChatServer(echo).run_in_thread() as srv:
        completion = _client(srv).chat.completions.create(model="m", messages=USER, temperature=0.25)
    assert completion.choices[0].message.content == "WHAT IS SIX TIMES SEVEN"
    assert completion.model == "m"
    assert seen == [0.25]


def test_async_client_concurrent_conversations():
    async def main(base_url: str) -> list[str]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="t", max_retries=0) as client:
            calls = [client.chat.completions.create(model="s", messages=USER) for _ in range(32)]
            return [c.choices[0].message.content for c in await asyncio.gather(*calls)]

    with ScriptedChatServer(["a", "b"]).run_in_thread() as srv:
        assert asyncio.run(main(srv.base_url)) == ["a"] * 32
        assert srv.requests == 32


def test_latency_is_applied_and_does_not_serialize():
    async def main(base_url: str) -> list[str]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="t", max_retries=0, timeout=60) as client:
            calls = [client.chat.completions.create(model="s", messages=USER) for _ in range(8)]
            return [c.choices[0].message.content for c in await asyncio.gather(*calls)]

    arrived: list[int] = []
    all_in = asyncio.Event()

    async def gate(messages, request):
        # No request is answered until all eight have slept their latency and arrived here: a server that
        # handled them one at a time would never get past the first (it fails after 30 s instead).
        arrived.append(1)
        if len(arrived) == 8:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 30)
        return "x"

    with ScriptedChatServer(["x"], latency_s=0.2).run_in_thread() as srv:
        start = time.perf_counter()
        _client(srv).chat.completions.create(model="s", messages=USER)
        assert time.perf_counter() - start >= 0.2  # a lower bound: load can only add to it
    with ScriptedChatServer(gate, latency_s=0.2).run_in_thread() as srv:
        assert asyncio.run(main(srv.base_url)) == ["x"] * 8
        assert srv.peak_in_flight == 8


def test_unknown_path_is_json_404(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/v1/nothing-here")
    response = conn.getresponse()
    assert response.status == 404
    assert response.getheader("Content-Type") == "application/json"
    assert "Invalid URL" in json.loads(response.read())["error"]["message"]
    # a 404 leaves the keep-alive connection usable
    conn.request("GET", "/v1/models")
    assert conn.getresponse().status == 200


def test_bad_requests_are_json_400_and_405(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(
        "POST", "/v1/chat/completions", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    assert response.status == 400
    assert "not valid JSON" in json.loads(response.read())["error"]["message"]
    conn.request("GET", "/v1/chat/completions")
    response = conn.getresponse()
    assert response.status == 405
    response.read()
    with pytest.raises(openai.BadRequestError):
        _client(server).chat.completions.create(model="s", messages=[])


def test_keep_alive_reuses_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = json.dumps({"model": "s", "messages": USER})
    for _ in range(200):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["choices"][0]["message"]["content"] == "first"
    first_socket = conn.sock
    conn.request("GET", "/v1/models")
    conn.getresponse().read()
    assert conn.sock is first_socket  # never reconnected
    assert server.requests == 201


def test_chunked_request_body(server):
    payload = json.dumps({"model": "s", "messages": USER}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", body=iter([payload[:10], payload[10:]]), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["choices"][0]["message"]["content"] == "first"


def test_faults_are_applied_in_order_and_counted():
    faults = [{"status": 503}, {"close": True}, {"status": 429, "headers": {"Retry-After": "0"}}]
    with ScriptedChatServer(["ok"], faults=faults).run_in_thread() as srv:
        client = _client(srv)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="s", messages=USER)
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="s", messages=USER)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="s", messages=USER)
        assert client.chat.completions.create(model="s", messages=USER).choices[0].message.content == "ok"
        assert srv.requests == 4


def test_hang_delays_the_answer():
    with ScriptedChatServer(["late"], faults=[{"hang": 0.3}]).run_in_thread() as srv:
        with pytest.raises(openai.APITimeoutError):
            openai.OpenAI(
                base_url=srv.base_url, api_key="t", max_retries=0, timeout=0.1
            ).chat.completions.create(model="s", messages=USER)
        assert srv.requests == 1


def test_logprobs_tool_calls_and_max_tokens():
    def responder(messages, request):
        if request.get("tools"):
            return {"tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]}
        return "one two three four"

    with ScriptedChatServer(responder).run_in_thread() as srv:
        client = _client(srv)
        completion = client.chat.completions.create(model="s", messages=USER, logprobs=True, top_logprobs=2)
        content = completion.choices[0].logprobs.content
        assert "".join(t.token for t in content) == "one two three four"
        assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in content)

        tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
        completion = client.chat.completions.create(model="s", messages=USER, tools=[tool])
        call = completion.choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 1, "b": 2})
        assert completion.choices[0].finish_reason == "tool_calls"

        completion = client.chat.completions.create(model="s", messages=USER, max_tokens=2)
        assert completion.choices[0].message.content == "one two"
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 2


def test_streaming_chunks_end_with_done():
    with ScriptedChatServer(["alpha beta gamma"]).run_in_thread() as srv:
        client = _client(srv)
        stream = client.chat.completions.create(
            model="s", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "alpha beta gamma"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == 3

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": USER, "stream": True}))
        raw = conn.getresponse().read().decode()
        assert raw.rstrip().endswith("data: [DONE]")


def test_tokenize_round_trips():
    text = "  leading, inner  spaces\nand newline  "
    assert "".join(tokenize(text)) == text
    assert len(tokenize(text)) == len(text.split())


def test_start_stop_inside_running_loop():
    async def main() -> str:
        async with ScriptedChatServer(["inside"]) as srv:
            async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="t", max_retries=0) as client:
                completion = await client.chat.completions.create(model="s", messages=USER)
            port = srv.port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        return completion.choices[0].message.content

    assert asyncio.run(main()) == "inside"


def test_stop_drops_hanging_requests_quickly():
    srv = ScriptedChatServer(["x"], faults=[{"hang": 30}])
    with srv.run_in_thread():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/v1/models")
        deadline = time.time() + 2
        while srv.requests == 0 and time.time() < deadline:
            time.sleep(0.01)
        start = time.perf_counter()
    assert time.perf_counter() - start < 2.0


def test_cli_serves_until_interrupted():
    proc = subprocess.Popen(
        [sys.executable, "-m", "aligngym.agents.server", "--port", "0", "--reply", "42", "--model", "cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "at http://127.0.0.1:" in line
        base_url = line.rsplit(" ", 1)[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="t", max_retries=0, timeout=5)
        assert client.chat.completions.create(model="cli", messages=USER).choices[0].message.content == "42"
        assert [m.id for m in client.models.list().data] == ["cli"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
