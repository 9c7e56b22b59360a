"""aligngym/ToolUse-v0: shipped tasks are solvable with the tools, both call protocols, rewards, CLI rollouts."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter

import pytest
from _helpers import run_cli
from gymnasium.utils.env_checker import check_env

from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.tool_calls import MAX_CALLS
from aligngym.envs.tool_use import BUILTIN_TOOLS, ToolUseEnv, expert_text, load_tasks
from aligngym.feedback.answers import is_number, normalize
from aligngym.trajectory import read_trajectories

TASK = {"id": "t", "question": "What is 6 times 7?", "answer": "42", "tools_needed": ["calculator"]}


def call(name, **arguments):
    return expert_text({"name": name, "arguments": arguments})


def tool_messages(info):
    return [m for m in info["messages"] if m["role"] == "tool"]


def to_fahrenheit(celsius: float) -> float:
    """Convert degrees Celsius to degrees Fahrenheit.

    Args:
        celsius: The temperature in degrees Celsius.
    """
    return celsius * 9 / 5 + 32


# -- shipped tasks ------------------------------------------------------------------------------------
def test_shipped_tasks_load_and_need_tools():
    tasks = load_tasks()
    max_turns = ToolUseEnv(builtin_tools=["calculator"]).max_turns
    assert len(tasks) >= 60 and len({t.id for t in tasks}) == len(tasks)
    kinds = Counter(t.id.split("-")[0] for t in tasks)
    assert kinds["search"] >= 20 and kinds["sql"] >= 20 and kinds["calc"] + kinds["py"] >= 20, kinds
    for task in tasks:
        assert task.expert and set(task.tools_needed) <= set(BUILTIN_TOOLS), task.id
        assert set(task.tools_needed) == {c["name"] for c in task.expert}, task.id
        assert len(task.expert) < max_turns, task.id  # room for the final answer


async def _expert_episode(env, task):
    """Play ``task`` with a scripted agent that makes the expert's text calls, then answers the gold."""

    def reply(messages):
        turn = sum(1 for m in messages if m["role"] == "assistant")
        return expert_text(task.expert[turn]) if turn < len(task.expert) else f"Answer: {task.answer}"

    agent = ScriptedAgent(reply)
    _, info = env.reset(options={"task_id": task.id})
    while True:
        response = await agent.act(info["messages"], tools=env.tool_schemas)
        _, reward, terminated, truncated, info = await env.astep(response.text)
        if terminated or truncated:
            return reward, terminated, info


def _answer_in(text, gold):
    if is_number(gold):
        return any(
            abs(float(n.replace(",", "")) - float(gold)) < 1e-9
            for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        )
    return normalize(gold) in normalize(text)


def test_expert_solves_the_shipped_tasks():
    tasks = load_tasks()
    env = ToolUseEnv()

    async def play_all():
        return [(task, *await _expert_episode(env, task)) for task in tasks]

    solved = []
    for task, reward, terminated, info in asyncio.run(play_all()):
        parts = info["reward_components"]
        results = tool_messages(info)
        # The gold is in what the tools returned, so the answer is earned, not known.
        assert _answer_in(results[-1]["content"], task.answer), (task.id, results[-1]["content"])
        assert len(results) == len(task.expert) and parts["tool_errors"] == 0, (task.id, results)
        assert terminated and parts["format"] == 1.0
        if parts["answer"] == 1.0:
            assert reward == pytest.approx(1.1)
            solved.append(task.id)
    env.close()
    assert len(solved) / len(tasks) >= 0.95, sorted({t.id for t in tasks} - set(solved))
    assert len(solved) == len(tasks)


# -- the CLI against a real OpenAI-protocol server with native tool calls ----------------------------
def test_cli_rollout_with_native_tool_calls(chat_server, tmp_path):
    tasks = [t for t in load_tasks() if t.id in ("search-07", "sql-03", "calc-09")]
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": t.id, "question": t.question, "answer": t.answer, "expert": list(t.expert)})
            + "\n"
            for t in tasks
        )
    )
    seen = []

    def responder(messages, request):
        task = next(t for t in tasks if t.question in messages[0]["content"])
        results = [m for m in messages if m["role"] == "tool"]
        if not results:
            first = task.expert[0]
            return {
                "tool_calls": [
                    {"id": "call_x", "function": {"name": first["name"], "arguments": first["arguments"]}}
                ]
            }
        seen.append(
            {
                "task": task.id,
                "result": results[-1],
                "tools": [s["function"]["name"] for s in request["tools"]],
            }
        )
        return f"Answer: {task.answer}"

    server = chat_server(responder)
    out = tmp_path / "r.jsonl"
    args = [
        "rollout",
        "aligngym/ToolUse-v0",
        "--model",
        "m",
        "--base-url",
        server.base_url,
        "--episodes",
        "3",
    ]
    args += ["--out", str(out), "--no-progress", "--env-kwargs", json.dumps({"tasks": str(path)})]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rows = read_trajectories(out)
    assert len(rows) == 3 and len(seen) == 3
    for row in rows:
        assert row["error"] is None and row["terminated"] and row["turns"] == 2
        assert row["reward_components"]["answer"] == 1.0 and row["reward"] == pytest.approx(1.1)
        calls = [m for m in row["messages"] if m.get("tool_calls")]
        results = [m for m in row["messages"] if m["role"] == "tool"]
        assert calls[0]["tool_calls"][0]["id"] == "call_x" and len(results) == 1
        assert results[0]["tool_call_id"] == "call_x" and not results[0]["content"].startswith("Error")
        # What the model saw is exactly what the env wrote.
        assert any(s["result"] == results[0] for s in seen)
    assert all(s["tools"] == list(BUILTIN_TOOLS) for s in seen)


# -- protocol, rewards, limits ------------------------------------------------------------------------
def test_native_tool_calls_get_tool_messages_with_their_ids():
    env = ToolUseEnv(tasks=[TASK])
    env.reset(seed=0)
    native = [
        {
            "id": "a1",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
        },
        {
            "id": "a2",
            "type": "function",
            "function": {"name": "sql", "arguments": {"query": "SELECT 1 AS one"}},
        },
    ]
    obs, reward, terminated, truncated, info = env.step(
        {"role": "assistant", "content": None, "tool_calls": native}
    )
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert [(m["tool_call_id"], m["name"], m["content"]) for m in tool_messages(info)] == [
        ("a1", "calculator", "42"),
        ("a2", "sql", "one\n1"),
    ]
    assert obs == "42\n\none\n1" and info["messages"][-3]["tool_calls"] == native
    _, reward, terminated, _, info = env.step("6 times 7 is 42.\nAnswer: 42")
    assert terminated and reward == pytest.approx(1.1)
    assert info["reward_components"] == {"answer": 1.0, "format": 1.0, "tool_errors": 0.0, "tool_calls": 2.0}


def test_malformed_calls_become_error_results_and_cost_reward():
    env = ToolUseEnv(tasks=[TASK])
    env.reset(seed=0)
    bad = [
        "<tool_call>{not json}</tool_call>",
        call("teleport", where="moon"),
        call("calculator", expression=42),
        call("calculator"),
        call("calculator", expression="1", extra=True),
        call("search", query="clock", k="3"),
        call("calculator", expression="__import__('os')"),  # well-formed, but the tool refuses it
    ]
    _, _, terminated, _, info = env.step("\n".join(bad))
    contents = [m["content"] for m in tool_messages(info)]
    assert not terminated and len(contents) == len(bad) and all(c.startswith("Error: ") for c in contents)
    assert "unknown tool 'teleport'" in contents[1] and "must be string, got integer" in contents[2]
    assert "missing required argument" in contents[3] and "unexpected argument 'extra'" in contents[4]
    assert [m["tool_call_id"] for m in tool_messages(info)] == [f"call_1_{i}" for i in range(len(bad))]
    _, reward, terminated, _, info = env.step("Answer: 41")
    parts = info["reward_components"]
    # Only the last call was well-formed; errors beyond 4 cost nothing more.
    assert parts == {"answer": 0.0, "format": pytest.approx(1 / 7), "tool_errors": 7.0, "tool_calls": 7.0}
    assert reward == pytest.approx(0.1 / 7 - 0.05 * 4)


def test_too_many_calls_in_one_message_are_refused():
    env = ToolUseEnv(tasks=[TASK])
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("calculator", expression="1") * 10_000)
    contents = [m["content"] for m in tool_messages(info)]
    # The first MAX_CALLS run, one more says why the rest were not; thousands of tags cost nothing.
    assert contents == ["1"] * MAX_CALLS + [
        f"Error: too many tool calls in one message (at most {MAX_CALLS})"
    ]
    native = [
        {"id": f"n{i}", "function": {"name": "calculator", "arguments": '{"expression": "2"}'}}
        for i in range(10)
    ]
    _, _, _, _, info = env.step({"role": "assistant", "content": "", "tool_calls": native})
    results = tool_messages(info)[-10:]
    # Every native call id gets an answer, as the OpenAI protocol requires.
    assert [m["tool_call_id"] for m in results] == [f"n{i}" for i in range(10)]
    assert [m["content"] for m in results].count("2") == MAX_CALLS


def test_max_turns_truncates_with_the_format_reward():
    env = ToolUseEnv(tasks=[TASK], max_turns=3)
    env.reset(seed=0)
    steps = [env.step(call("calculator", expression="6*7")) for _ in range(3)]
    assert [s[1:4] for s in steps] == [
        (0.0, False, False),
        (0.0, False, False),
        (pytest.approx(0.1), False, True),
    ]
    assert steps[-1][4]["reward_components"] == {
        "answer": 0.0,
        "format": 1.0,
        "tool_errors": 0.0,
        "tool_calls": 3.0,
    }
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step("Answer: 42")


def test_text_results_as_one_user_message():
    env = ToolUseEnv(tasks=[TASK], text_results="user")
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("calculator", expression="6*7") + call("calculator", expression="1/0"))
    last = info["messages"][-1]
    assert last == {
        "role": "user",
        "content": "<tool_response>\n42\n</tool_response>\n<tool_response>\nError: division by zero\n</tool_response>",
    }


def test_prompt_lists_tools_protocol_and_tables():
    env = ToolUseEnv()
    obs, info = env.reset(seed=3)
    task = env._by_id[info["task_id"]]
    assert obs.startswith(task.question) and "<tool_call>" in obs and "Answer:" in obs
    assert "- calculator(expression: string)" in obs and "employees(id, name" in obs
    assert [s["function"]["name"] for s in env.tool_schemas] == list(BUILTIN_TOOLS)
    assert all("return" not in s["function"] for s in env.tool_schemas)
    assert env.reset(seed=3)[0] == obs and env.reset(options={"task_id": "sql-01"})[1]["task_id"] == "sql-01"
    with pytest.raises(ValueError, match="unknown task_id"):
        env.reset(options={"task_id": "nope"})


def test_gymnasium_check_env():
    env = ToolUseEnv()
    check_env(env, skip_render_check=True)
    env.close()


# -- user tools and built-in selection ----------------------------------------------------------------
def test_user_callable_tool_replaces_the_builtins():
    task = {"id": "f", "question": "What is 100 C in F?", "answer": "212", "tools_needed": ["to_fahrenheit"]}
    env = ToolUseEnv(tasks=[task], tools=[to_fahrenheit], builtin_tools=False)
    assert [s["function"]["name"] for s in env.tool_schemas] == ["to_fahrenheit"]
    obs, _ = env.reset(seed=0)
    assert "to_fahrenheit(celsius: number)" in obs and "sql" not in obs
    _, _, _, _, info = env.step(call("to_fahrenheit", celsius=100))
    assert tool_messages(info)[-1]["content"] == "212.0"
    _, reward, terminated, _, _ = env.step("Answer: 212")
    assert terminated and reward == pytest.approx(1.1)


def test_user_tools_add_to_builtins_and_override_same_names():
    def search(query: str) -> str:
        """My own search.

        Args:
            query: What to find.
        """
        return f"found {query}"

    env = ToolUseEnv(tools=[to_fahrenheit, search])
    assert list(env.tools) == ["lookup", "sql", "calculator", "python", "to_fahrenheit", "search"]
    assert env.tools["search"].fn is search
    assert list(ToolUseEnv(builtin_tools=["calculator"]).tools) == ["calculator"]
    with pytest.raises(ValueError, match="unknown built-in"):
        ToolUseEnv(builtin_tools=["shell"])
    with pytest.raises(ValueError, match="share a name"):
        ToolUseEnv(tools=[search, search])
    with pytest.raises(ValueError, match="no tools"):
        ToolUseEnv(builtin_tools=False)


def test_python_tool_runs_in_a_pooled_sandbox_and_gives_it_back():
    env = ToolUseEnv(tasks=[TASK], builtin_tools=["python"])
    env.reset(seed=0)
    _, _, _, _, info = env.step(
        call("python", code="print(6 * 7)") + call("python", code="raise SystemExit(3)")
    )
    ok, failed = (m["content"] for m in tool_messages(info))
    assert ok == "exit code: 0\nstdout:\n42" and failed.startswith("Error: the program failed\nexit code: 3")
    assert info["reward_components"]["tool_errors"] == 1.0 and env._python.lease.held
    env.reset(seed=0)
    assert not env._python.lease.held  # each episode gets a clean sandbox
    env.step(call("python", code="print(1)"))
    env.close()
    assert not env._python.lease.held
