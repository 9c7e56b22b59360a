"""OpenAIAgent against the scripted server (real sockets, the real openai client), and ScriptedAgent."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from aligngym.agents.base import Agent, AgentError, AgentResponse
from aligngym.agents.openai_agent import OpenAIAgent, ToolCallResponse
from aligngym.agents.scripted import ScriptedAgent
from aligngym.agents.server import ScriptedChatServer

USER = [{"role": "user", "content": "say something"}]


def _agent(srv: ScriptedChatServer, **kwargs) -> OpenAIAgent:
    options = {"timeout": 2.0, "max_retries": 2, "retry_backoff_s": 0.01, **kwargs}
    return OpenAIAgent("scripted", srv.base_url, **options)


def _act(agent: OpenAIAgent, messages=USER, **kwargs) -> AgentResponse:
    async def main() -> AgentResponse:
        try:
            return await agent.act(messages, **kwargs)
        finally:
            await agent.aclose()

    return asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_agent_returns_text_and_usage():
    with ScriptedChatServer(["hello world"]).run_in_thread() as srv:
        agent = _agent(srv, temperature=0.3, top_p=0.9, max_tokens=16, extra_body={"top_k": 5})
        assert isinstance(agent, Agent)
        response = _act(agent)
        assert type(response) is AgentResponse
        assert response.text == "hello world"
        assert response.finish_reason == "stop"
        assert response.usage == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert response.logprobs is None
        sent = srv.last_request
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["top_k"]) == (0.3, 0.9, 16, 5)
        assert "logprobs" not in sent and "tools" not in sent


def test_agent_works_across_event_loops():
    with ScriptedChatServer(["a", "b"]).run_in_thread() as srv:
        agent = _agent(srv)
        assert asyncio.run(agent.act(USER)).text == "a"
        assert asyncio.run(agent.act([*USER, {"role": "assistant", "content": "a"}, *USER])).text == "b"
        asyncio.run(agent.aclose())


def test_retries_through_two_500s():
    with ScriptedChatServer(["ok"], faults=[{"status": 500}, {"status": 500}]).run_in_thread() as srv:
        assert _act(_agent(srv, max_retries=2)).text == "ok"
        assert srv.requests == 3


def test_persistent_500_raises_agent_error_with_url():
    with ScriptedChatServer(["ok"], faults=[{"status": 500}] * 10).run_in_thread() as srv:
        with pytest.raises(AgentError, match=r"answered HTTP 500") as info:
            _act(_agent(srv, max_retries=2))
        assert srv.base_url in str(info.value)
        assert "\n" not in str(info.value)
        assert srv.requests == 3


def test_client_error_is_not_retried():
    with ScriptedChatServer(["ok"], faults=[{"status": 400, "message": "bad model"}]).run_in_thread() as srv:
        with pytest.raises(AgentError, match="HTTP 400.*bad model"):
            _act(_agent(srv))
        assert srv.requests == 1


def test_hang_is_retried_then_succeeds():
    with ScriptedChatServer(["ok"], faults=[{"hang": 5}]).run_in_thread() as srv:
        assert _act(_agent(srv, timeout=0.2, max_retries=1)).text == "ok"
        assert srv.requests == 2


def test_hangs_past_retries_raise_agent_error():
    with ScriptedChatServer(["ok"], faults=[{"hang": 5}] * 3).run_in_thread() as srv:
        start = time.perf_counter()
        with pytest.raises(AgentError, match="did not answer within 0.2s") as info:
            _act(_agent(srv, timeout=0.2, max_retries=2))
        assert srv.base_url in str(info.value)
        assert srv.requests == 3
        # Each hang is 5 s: giving up after three 0.2 s attempts means no attempt waited its hang out.
        assert time.perf_counter() - start < 5.0


def test_closed_connection_is_retried():
    with ScriptedChatServer(["ok"], faults=[{"close": True}, {"close": True}]).run_in_thread() as srv:
        assert _act(_agent(srv, max_retries=2)).text == "ok"
        assert srv.requests == 3


def test_closed_connections_past_retries_raise_agent_error():
    with ScriptedChatServer(["ok"], faults=[{"close": True}] * 5).run_in_thread() as srv:
        with pytest.raises(AgentError, match="cannot reach") as info:
            _act(_agent(srv, max_retries=1))
        assert srv.base_url in str(info.value)
        assert srv.requests == 2


def test_check_unreachable_port_has_fix_hint():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    agent = OpenAIAgent("my-model", url, timeout=1.0, max_retries=0)
    with pytest.raises(AgentError) as info:
        asyncio.run(agent.check())
    message = str(info.value)
    assert message.startswith(f"cannot reach OpenAI-compatible server at {url}: ")
    assert "vllm serve my-model" in message and "--base-url" in message
    with pytest.raises(AgentError, match="cannot reach"):
        asyncio.run(agent.act(USER))


def test_check_passes_when_server_is_up():
    with ScriptedChatServer(["ok"]).run_in_thread() as srv:
        asyncio.run(_agent(srv).check())
        assert srv.requests == 1


def test_logprobs_when_asked():
    with ScriptedChatServer(["a b c"]).run_in_thread() as srv:
        response = _act(_agent(srv, logprobs=True))
        assert srv.last_request["logprobs"] is True
        assert response.logprobs is not None and len(response.logprobs) == 3
        assert all(lp < 0 for lp in response.logprobs)


def test_token_ids_when_asked_as_vllm_answers_them():
    from aligngym.agents.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    with ScriptedChatServer(["12", "abcdef"], tokenizer=tok).run_in_thread() as srv:
        plain = _act(_agent(srv))
        assert "return_token_ids" not in srv.last_request  # off by default: OpenAI itself rejects it
        assert plain.token_ids is None and plain.prompt_ids is None
        response = _act(_agent(srv, return_tokens=True))
        assert srv.last_request["return_token_ids"] is True and srv.last_request["logprobs"] is True
        prompt = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
        assert response.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
        assert response.token_ids == tok("12", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert len(response.logprobs) == len(response.token_ids) == response.usage["completion_tokens"]
        assert response.usage["prompt_tokens"] == len(response.prompt_ids)
        # Cut by max_tokens: no end-of-turn token, and the text is what the kept ids spell.
        history = [*USER, {"role": "assistant", "content": "12"}, *USER]
        cut = _act(_agent(srv, return_tokens=True, max_tokens=2), history)
        assert (cut.text, cut.finish_reason, len(cut.token_ids)) == ("ab", "length", 2)
        # A caller's extra_body wins, e.g. for a server that refuses the parameter.
        _act(_agent(srv, return_tokens=True, extra_body={"return_token_ids": False}))
        assert srv.last_request["return_token_ids"] is False


def test_token_ids_are_left_unknown_when_the_server_ignores_the_request():
    with ScriptedChatServer(["a b c"]).run_in_thread() as srv:  # without a tokenizer, as OpenAI or old vLLM
        response = _act(_agent(srv, return_tokens=True))
        assert srv.last_request["return_token_ids"] is True
        assert response.token_ids is None and response.prompt_ids is None
        assert response.logprobs is not None and len(response.logprobs) == 3  # what it does answer is kept


def test_tool_calls_are_returned():
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}

    def responder(messages, request):
        assert request["tools"] == [tool]
        return {
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": "{}"}}],
        }

    with ScriptedChatServer(responder).run_in_thread() as srv:
        response = _act(_agent(srv), tools=[tool])
    assert isinstance(response, ToolCallResponse)
    assert response.text == ""
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ]


def test_scripted_agent_picks_reply_by_turn():
    agent = ScriptedAgent(["first", "second"])
    assert isinstance(agent, Agent)
    chat = [{"role": "user", "content": "hi"}]
    assert asyncio.run(agent.act(chat)).text == "first"
    chat += [{"role": "assistant", "content": "first"}, {"role": "user", "content": "more"}]
    assert asyncio.run(agent.act(chat)).text == "second"
    chat += [{"role": "assistant", "content": "second"}, {"role": "user", "content": "more"}]
    assert asyncio.run(agent.act(chat)).text == "second"  # clamped
    assert agent.calls == 3


def test_scripted_agent_callable_and_validation():
    agent = ScriptedAgent(lambda messages: f"{len(messages)} messages", name="counter")
    assert agent.name == "counter"
    assert asyncio.run(agent.act(USER * 3)).text == "3 messages"
    asyncio.run(agent.aclose())
    with pytest.raises(ValueError):
        ScriptedAgent([])


# -- deadline, size cap, malformed content ---------------------------------------------------------------
def test_a_dripping_server_hits_the_per_request_deadline():
    # One byte every 0.1 s keeps every read under the timeout; only a deadline on the whole reply stops it.
    with ScriptedChatServer(["ok"], faults=[{"drip": 0.1}] * 2).run_in_thread() as srv:
        start = time.perf_counter()
        with pytest.raises(AgentError, match="did not answer within 1s"):
            _act(_agent(srv, timeout=1.0, max_retries=1))
        elapsed = time.perf_counter() - start
        assert srv.requests == 2
    # The drip never ends: without the deadline this would hang (minutes) instead of ~2 s.
    assert elapsed < 30


def test_a_reply_over_the_size_cap_is_refused_not_retried():
    with ScriptedChatServer(["ok"], faults=[{"huge": 4_000_000}]).run_in_thread() as srv:
        with pytest.raises(AgentError, match="too large.*1000000 bytes"):
            _act(_agent(srv, max_reply_bytes=1_000_000))
        assert srv.requests == 1


def test_a_large_reply_under_the_cap_is_read_whole():
    with ScriptedChatServer(["ok"], faults=[{"huge": 3_000_000}]).run_in_thread() as srv:
        assert _act(_agent(srv, max_reply_bytes=4_000_000)).text == "x" * 3_000_000


def test_the_default_size_cap_is_set_and_sane():
    agent = OpenAIAgent("m", "http://127.0.0.1:9/v1")
    assert 1 << 20 <= agent.max_reply_bytes <= 64 << 20
    with pytest.raises(ValueError):
        OpenAIAgent("m", "http://127.0.0.1:9/v1", max_reply_bytes=0)


@pytest.mark.parametrize("content", [5, ["a", "b"], {"text": "hi"}])
def test_non_string_content_is_an_error_not_empty_text(content):
    server = ScriptedChatServer(lambda messages, request: {"content": content})
    with server.run_in_thread() as srv, pytest.raises(AgentError, match="content of type"):
        _act(_agent(srv))
