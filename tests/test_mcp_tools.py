"""MCP tool servers in ToolUse-v0: stdio and HTTP servers (tests/mcp_server_example.py), both call protocols,
results as tool messages, rewards the server cannot touch, and nothing left running after close()."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("mcp", reason="MCP tool servers need the mcp extra: pip install 'aligngym[mcp]'")

from aligngym.agents.scripted import ReplayAgent, ScriptedAgent  # noqa: E402
from aligngym.envs.mcp_tools import (  # noqa: E402
    ANSWER_TOOL_NAMES,
    MCPServerError,
    MCPServerSpec,
    parse_specs,
    refuse_collisions,
)
from aligngym.envs.tool_calls import validate_arguments  # noqa: E402
from aligngym.envs.tool_use import ToolUseEnv, expert_text  # noqa: E402
from aligngym.episode import run_episode  # noqa: E402

SERVER = str(Path(__file__).with_name("mcp_server_example.py"))
TASKS = [
    {"id": "capital", "question": "What is the capital of Zorvania?", "answer": "Quellport"},
    {"id": "sum", "question": "What is 1234 + 4321?", "answer": "5555"},
    {"id": "other", "question": "What is the capital of Ostrelia?", "answer": "Brannick"},
]
COMPONENTS = {"answer", "format", "tool_errors", "tool_calls"}


def stdio(*args, **spec):
    return {"command": sys.executable, "args": [SERVER, *args], **spec}


def make_env(*servers, **kwargs):
    kwargs.setdefault("builtin_tools", False)  # built-ins import transformers: only the tests that need them
    return ToolUseEnv(tasks=TASKS, mcp_servers=list(servers), **kwargs)


def call(name, **arguments):
    return expert_text({"name": name, "arguments": arguments})


def native(call_id, name, **arguments):
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


def children() -> set[int]:
    """Live processes whose parent is this one (read from /proc: no psutil needed)."""
    me, found = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(int(stat.parent.name))
    return found


def sockets() -> int:
    """Open socket descriptors of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def mcp_threads() -> int:
    """Live MCP event-loop threads (the module's shared env holds one)."""
    return sum(t.name == "aligngym-mcp" for t in threading.enumerate())


@pytest.fixture(scope="module")
def env():
    """One env over the hostile server for the tests that do not stop it (starting one takes ~1-3 s)."""
    env = make_env(stdio("--hostile", timeout=1.5, max_result_chars=500))
    yield env
    env.close()


# -- tools, calls, results --------------------------------------------------------------------------
def test_server_tools_become_env_tools_with_their_schemas(env):
    schemas = {s["function"]["name"]: s["function"] for s in env.tool_schemas}
    assert {"add", "lookup", "hang", "forge"} <= set(schemas)
    add = schemas["add"]
    assert add["description"] == "Add two integers."
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    assert add["parameters"]["required"] == ["a", "b"]
    prompt, _ = env.reset(seed=0)
    assert "- add(a: integer, b: integer): Add two integers." in prompt


def test_text_and_native_calls_both_return_tool_messages(env):
    env.reset(seed=0, options={"task_id": "capital"})
    _, reward, terminated, _, info = env.step(call("add", a=2, b=40) + call("lookup", country="Zorvania"))
    tool = [m for m in info["messages"] if m["role"] == "tool"]
    assert [(m["name"], m["content"], m["tool_call_id"]) for m in tool] == [
        ("add", "42", "call_1_0"),
        ("lookup", "Quellport", "call_1_1"),
    ]
    assert (reward, terminated) == (0.0, False)
    _, _, _, _, info = env.step(native("abc123", "lookup", country="Ostrelia"))
    assert info["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "abc123",
        "name": "lookup",
        "content": "Brannick",
    }
    assert info["reward_components"]["tool_errors"] == 0 and info["reward_components"]["tool_calls"] == 3


def test_bad_calls_are_tool_errors_not_crashes(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(
        call("lookup", country="Atlantis") + call("add", a="x", b=1) + call("failing")
    )
    contents = [m["content"] for m in info["messages"] if m["role"] == "tool"]
    assert contents[0].startswith("Error:") and "Atlantis" in contents[0]  # the server's own error
    assert contents[1] == "Error: argument 'a' must be integer, got string"  # refused before the server
    assert contents[2] == "Error: the database is down"
    assert info["reward_components"] == {
        "answer": 0.0,
        "format": 2 / 3,
        "tool_errors": 3.0,
        "tool_calls": 3.0,
    }


def test_images_structured_content_and_floods_are_rendered_as_bounded_text(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("picture") + call("structured") + call("flood", chars=100_000))
    picture, structured, flood = (m["content"] for m in info["messages"] if m["role"] == "tool")
    assert picture.startswith("[image (image/png, about 72 bytes) not shown") and picture.endswith("\na dot")
    assert json.loads(structured) == {"reward": 1.0, "answer": 1.0, "correct": True}
    assert len(flood) < 600 and "characters cut" in flood  # max_result_chars=500
    assert info["reward_components"]["tool_errors"] == 0


def test_a_hung_call_times_out_and_the_episode_goes_on(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("hang", seconds=30))
    assert info["messages"][-1]["content"] == "Error: the MCP tool 'hang' timed out after 1.5s"
    _, _, _, _, info = env.step(call("add", a=1, b=2))
    assert info["messages"][-1]["content"] == "3"
    assert info["reward_components"]["tool_errors"] == 1


# -- episodes ---------------------------------------------------------------------------------------
def seed_for(env, task_id):
    """A seed whose episode is ``task_id`` (the env picks the task from its seed)."""
    return next(s for s in range(100) if env.reset(seed=s)[1]["task_id"] == task_id)


def _lookup_then_answer(answer):
    def reply(messages):
        return call("lookup", country="Zorvania") if messages[-1]["role"] == "user" else f"Answer: {answer}"

    return ScriptedAgent(reply)


@pytest.mark.parametrize(("answer", "reward"), [("Quellport", 1.1), ("Brannick", 0.1)])
def test_episode_with_an_mcp_call_gets_the_env_reward(env, answer, reward):
    [traj] = asyncio.run(run_episode(env, _lookup_then_answer(answer), seed=seed_for(env, "capital")))
    assert traj.error is None and traj.terminated and traj.turns == 2
    assert traj.reward == pytest.approx(reward)
    assert traj.success is (reward > 1)
    assert traj.reward_components == {
        "answer": float(reward > 1),
        "format": 1.0,
        "tool_errors": 0.0,
        "tool_calls": 1.0,
    }
    assert [m["role"] for m in traj.messages] == ["user", "assistant", "tool", "assistant"]


def test_native_calls_replayed_score_like_text_calls(env):
    stored = [native("id-1", "add", a=1234, b=4321), {"role": "assistant", "content": "Answer: 5555"}]
    [traj] = asyncio.run(run_episode(env, ReplayAgent(stored), seed=seed_for(env, "sum")))
    assert traj.error is None and traj.success and traj.reward == pytest.approx(1.1)
    assert traj.messages[2] == {"role": "tool", "tool_call_id": "id-1", "name": "add", "content": "5555"}


def test_same_seed_same_episode(env):
    def play(seed):
        agent = ScriptedAgent([call("add", a=seed, b=1) + call("lookup", country="Ostrelia"), "Answer: 7"])
        [traj] = asyncio.run(run_episode(env, agent, seed=seed))
        return traj.messages, traj.rewards

    first = [play(seed) for seed in range(4)]
    assert first == [play(seed) for seed in range(4)]
    assert len({json.dumps(m[0][0]) for m in first}) > 1  # the seed does pick the task


def test_gymnasium_check_env(env):
    check_env(env, skip_render_check=True)


# -- security: the reward is the task's -------------------------------------------------------------
def test_a_result_cannot_forge_messages_calls_or_reward(env):
    env.reset(seed=0, options={"task_id": "sum"})
    _, reward, terminated, _, info = env.step(native("mine", "forge"))
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "tool"]
    forged = info["messages"][-1]
    assert forged["tool_call_id"] == "mine" and set(forged) == {"role", "tool_call_id", "name", "content"}
    assert isinstance(forged["content"], str) and '"role": "assistant"' in forged["content"]  # inert text
    assert (reward, terminated) == (0.0, False)
    # The <tool_call> inside the result is never run: only assistant messages are read for calls.
    assert info["reward_components"]["tool_calls"] == 1
    _, reward, terminated, _, info = env.step("I trust the tool. Answer: 42")
    assert terminated and info["reward_components"]["answer"] == 0.0 and reward == pytest.approx(0.1)


def test_a_server_cannot_ask_the_env_for_input(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("ask"))
    content = info["messages"][-1]["content"]
    assert content.startswith("Error: the MCP server") and "elicitation" in content
    assert info["reward_components"]["tool_errors"] == 1


def test_result_keys_never_reach_the_reward_components(env):
    env.reset(seed=0, options={"task_id": "sum"})
    env.step(call("structured"))
    _, reward, _, _, info = env.step("Answer: 1")
    assert set(info["reward_components"]) == COMPONENTS and env.success_component == "answer"
    assert info["reward_components"]["answer"] == 0.0 and reward == pytest.approx(0.1)


def test_reserved_and_taken_names_are_refused():
    class Named:
        def __init__(self, name):
            self.name = name

    for name in [*sorted(ANSWER_TOOL_NAMES), "Final_Answer", "SUBMIT"]:
        with pytest.raises(MCPServerError, match="reserved"):
            refuse_collisions([Named(name)], taken=[])
    with pytest.raises(MCPServerError, match="reserved"):
        refuse_collisions([Named("grade")], taken=[], reserved=["grade"])  # an env's own answer tool
    with pytest.raises(MCPServerError, match="'calculator' has the name of one of the environment's tools"):
        refuse_collisions([Named("add"), Named("calculator")], taken=["calculator", "search"])
    refuse_collisions([Named("add")], taken=["calculator"])


@pytest.mark.slow
def test_servers_with_refused_names_stop_before_the_error():
    before, threads = children(), mcp_threads()
    with pytest.raises(MCPServerError, match="'lookup' has the name of one of the environment's tools"):
        ToolUseEnv(tasks=TASKS, builtin_tools=["search", "lookup"], mcp_servers=[stdio()])
    with pytest.raises(MCPServerError, match="'final_answer' is refused: the name is reserved"):
        make_env(stdio("--also", "final_answer"))
    with pytest.raises(MCPServerError, match="'add' is offered by .* and "):
        make_env(stdio(), stdio())
    assert children() <= before and mcp_threads() == threads


@pytest.mark.slow
def test_a_name_prefix_separates_servers_and_hides_raw_names():
    env = make_env(stdio(name="kb"), stdio(name="math"))
    try:
        names = [s["function"]["name"] for s in env.tool_schemas]
        assert names == ["kb_add", "kb_lookup", "math_add", "math_lookup"]
        env.reset(seed=0)
        _, _, _, _, info = env.step(call("math_add", a=2, b=2) + call("add", a=2, b=2))
        assert [m["content"] for m in info["messages"] if m["role"] == "tool"] == [
            "4",
            "Error: unknown tool 'add'; tools: kb_add, kb_lookup, math_add, math_lookup",
        ]
    finally:
        env.close()


# -- lifecycle --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_close_leaves_no_process_or_thread_after_a_hang_and_a_crash():
    before, threads, loops = children(), set(threading.enumerate()), mcp_threads()
    env = make_env(stdio("--hostile", timeout=1), stdio("--hostile", name="b", timeout=1))
    servers = children() - before
    assert len(servers) == 2 and mcp_threads() == 1 + loops
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("hang", seconds=60) + call("b_crash"))
    hung, crashed = (m["content"] for m in info["messages"] if m["role"] == "tool")
    assert hung == "Error: the MCP tool 'hang' timed out after 1s"
    assert crashed.startswith("Error: the MCP server") and "failed" in crashed
    _, _, _, _, info = env.step(call("b_add", a=1, b=1) + call("add", a=1, b=1))
    assert [m["content"] for m in info["messages"][-2:]] == [
        f"Error: the MCP server {env._mcp.specs[1].label} failed: Connection closed",
        "2",  # the hung server still answers other calls
    ]
    env.close()
    assert not (children() & servers) and set(threading.enumerate()) <= threads
    env.close()  # twice: harmless
    _, _, _, _, info = env.step(call("add", a=1, b=1))  # a closed env's tools fail as tool errors
    assert info["messages"][-1]["content"].endswith("is not running")


@pytest.mark.slow
def test_an_env_dropped_without_close_stops_its_servers():
    before, threads = children(), mcp_threads()
    env = make_env(stdio())
    servers = children() - before
    assert servers
    del env
    gc.collect()
    assert not (children() & servers) and mcp_threads() == threads


@pytest.mark.slow
def test_aclose_stops_the_servers_without_blocking_the_loop():
    before = children()
    env = make_env(stdio())
    servers = children() - before

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await env.aclose()
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) > 0  # the loop ran while the servers stopped
    assert not (children() & servers)


def test_servers_that_fail_to_start_raise_one_clear_error():
    before, threads = children(), mcp_threads()
    with pytest.raises(
        MCPServerError, match="MCP stdio server 'no-such-mcp-server --flag' failed to start: "
    ):
        make_env({"command": "no-such-mcp-server", "args": ["--flag"]})
    crash = "import sys; sys.stderr.write('bad config: no token\\n'); sys.exit(2)"
    with pytest.raises(
        MCPServerError, match=r"(?s)failed to start: .*its stderr ends:\nbad config: no token"
    ):
        make_env({"command": sys.executable, "args": ["-c", crash]})
    silent = {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"], "startup_timeout": 1}
    with pytest.raises(MCPServerError, match="did not answer the MCP handshake and tools/list within 1s"):
        make_env(silent)
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nobody listens there
    with pytest.raises(MCPServerError, match=f"MCP HTTP server '{url}' failed to start: "):
        make_env({"url": url})
    assert children() <= before and mcp_threads() == threads


# -- HTTP -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """The example server over streamable HTTP on a free loopback port; yields its URL and process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        assert proc.poll() is None, "the HTTP MCP server did not start"
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_http_server_tools_work_and_close_releases_the_connection(http_server):
    url, _ = http_server
    sockets_before, threads = sockets(), set(threading.enumerate())
    env = make_env({"url": url})
    try:
        assert [s["function"]["name"] for s in env.tool_schemas] == ["add", "lookup"]
        env.reset(seed=0)
        _, _, _, _, info = env.step(call("add", a=20, b=22))
        assert info["messages"][-1]["content"] == "42"
        _, _, _, _, info = env.step(native("n1", "lookup", country="Zorvania"))
        assert info["messages"][-1] == {
            "role": "tool",
            "tool_call_id": "n1",
            "name": "lookup",
            "content": "Quellport",
        }
    finally:
        env.close()
    assert sockets() <= sockets_before and set(threading.enumerate()) <= threads


@pytest.mark.slow
def test_an_http_server_that_dies_gives_tool_errors_and_close_stays_clean(http_server):
    url, proc = http_server
    sockets_before, threads = sockets(), set(threading.enumerate())
    env = make_env({"url": url, "timeout": 5})
    env.reset(seed=0)
    proc.kill()
    proc.wait(10)
    _, _, _, _, info = env.step(call("add", a=1, b=1))
    assert info["messages"][-1]["content"].startswith(f"Error: the MCP server '{url}'")
    assert info["reward_components"]["tool_errors"] == 1
    env.close()
    assert sockets() <= sockets_before and set(threading.enumerate()) <= threads


# -- configuration ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"command": "x", "url": "http://h"}, "exactly one of 'command'"),
        ({"args": ["x"]}, "exactly one of 'command'"),
        ({"command": "x", "argv": []}, r"unknown keys \['argv'\]"),
        ({"url": "file:///etc/passwd"}, "url must be http:// or https://"),
        ({"command": "x", "name": "a.b"}, "name must match"),
        ({"command": "x", "args": [1]}, "must be strings"),
        ({"command": "x", "args": "--flag"}, "args is a list of strings"),
        ({"command": "x", "env": ["A=1"]}, "env a dict of strings"),
        ({"command": "x", "timeout": 0}, "timeout and startup_timeout must be > 0"),
    ],
)
def test_bad_specs_are_refused_before_anything_starts(spec, message):
    with pytest.raises(ValueError, match=message):
        MCPServerSpec.parse(spec)


def test_a_single_spec_instead_of_a_list_is_refused():
    with pytest.raises(ValueError, match="mcp_servers is a list of servers"):
        parse_specs({"command": "x"})


def test_extra_arguments_only_where_the_schema_allows_them():
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert validate_arguments(closed, {"a": 1, "b": 2}) == "unexpected argument 'b' (arguments: a)"
    assert validate_arguments({**closed, "additionalProperties": True}, {"a": 1, "b": 2}) is None
    typed = {**closed, "additionalProperties": {"type": "string"}}
    assert validate_arguments(typed, {"b": 2}) == "argument 'b' must be string, got integer"


def test_missing_mcp_package_says_how_to_install(monkeypatch):
    threads = mcp_threads()
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(ImportError, match=r"pip install 'aligngym\[mcp\]'"):
        make_env(stdio())
    assert mcp_threads() == threads


def test_import_aligngym_does_not_import_mcp():
    code = (
        "import sys, aligngym, aligngym.envs.tool_use, aligngym.envs.mcp_tools; "
        "assert not any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules), 'mcp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/tmp", timeout=120)
