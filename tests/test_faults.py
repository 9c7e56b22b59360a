"""Faults on the way to the model and in sandboxes: retried, then recorded; the run goes on and counts them."""

from __future__ import annotations

import asyncio
import itertools

from _helpers import solve

import aligngym
from aligngym.agents import BalancedAgent, OpenAIAgent
from aligngym.agents.balanced import conversation_key
from aligngym.trajectory import read_trajectories


def _agent(url, **kwargs):
    return OpenAIAgent(model="m", base_url=url, retry_backoff_s=0.01, **kwargs)


def test_two_servers_share_the_load_and_keep_each_episode(chat_server, tmp_path):
    seen = {"a": [], "b": []}

    def responder(label):
        def reply(messages, request):
            seen[label].append(conversation_key(messages))
            return "wrong"  # every turn is wrong, so each episode makes max_turns requests

        return reply

    a = chat_server(responder("a"), latency_s=0.02)
    b = chat_server(responder("b"), latency_s=0.02)
    agent = BalancedAgent([_agent(a.base_url), _agent(b.base_url)])
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        aligngym.rollout(
            "aligngym/Arithmetic-v0",
            agent,
            episodes=40,
            out=out,
            concurrency=8,
            env_kwargs={"max_turns": 3},
            progress=False,
        )
    )
    assert summary.errors == 0 and summary.written == 40
    assert len(seen["a"]) + len(seen["b"]) == 120
    assert min(len(seen["a"]), len(seen["b"])) >= 30, (len(seen["a"]), len(seen["b"]))  # both did real work
    assert not set(seen["a"]) & set(seen["b"]), "an episode moved between servers"


def test_server_errors_are_retried_then_recorded_and_counted(chat_server, tmp_path):
    # 500 for the first 12 requests: with one retry each, the first episodes fail, the rest succeed.
    server = chat_server(lambda m, r: solve(m), faults=[{"status": 500}] * 12)
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        aligngym.rollout(
            "aligngym/Arithmetic-v0",
            _agent(server.base_url, max_retries=1),
            episodes=20,
            out=out,
            concurrency=2,
            progress=False,
        )
    )
    rows = read_trajectories(out)
    failed = [r for r in rows if r["error"]]
    assert len(rows) == 20 and summary.errors == len(failed) > 0
    assert all("HTTP 500" in r["error"] for r in failed)
    assert sum(r["reward"] == 1.5 for r in rows) == 20 - len(failed)


def test_hung_and_dropped_connections_are_retried_then_recorded(chat_server, tmp_path):
    faults = itertools.chain([{"hang": 2.0}, {"close": True}, {"close": True}, {"close": True}])
    server = chat_server(lambda m, r: solve(m), faults=faults)
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        aligngym.rollout(
            "aligngym/Arithmetic-v0",
            _agent(server.base_url, timeout=0.5, max_retries=1),
            episodes=6,
            out=out,
            concurrency=1,
            progress=False,
        )
    )
    rows = read_trajectories(out)
    assert len(rows) == 6 and summary.errors == sum(1 for r in rows if r["error"])
    errors = [r["error"] for r in rows if r["error"]]
    assert errors and all("did not answer" in e or "cannot reach" in e for e in errors), errors
    assert rows[-1]["reward"] == 1.5  # the run went on and later episodes succeeded


def test_sandbox_dying_mid_episode_marks_the_episode_and_is_replaced(tmp_path):
    import os
    import signal
    import threading
    import time

    from test_sandbox_local import _server_python_pid

    from aligngym.envs.code_exec import CodeExecEnv
    from aligngym.sandboxes import make_sandbox

    task = {"id": "slow", "prompt": "f", "tests": ["assert f() == 1"]}
    with make_sandbox("local", timeout=20) as sb:
        env = CodeExecEnv(tasks=[task], sandbox=sb)
        env.reset(seed=0)
        slow = "```python\nimport time\nopen('started', 'w').close()\ntime.sleep(15)\ndef f():\n    return 1\n```"
        result = []
        stepper = threading.Thread(target=lambda: result.append(env.step(slow)))
        stepper.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(sb.workdir, "started")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(_server_python_pid(sb), signal.SIGKILL)  # the sandbox dies under the episode
        stepper.join(20)
        _, reward, terminated, _, info = result[0]
        assert info["status"] == "sandbox_error" and reward == 0.0 and terminated  # marked, not dropped
        env.reset(seed=0)
        _, reward, *_ = env.step("```python\ndef f():\n    return 1\n```")
        assert reward == 1.0 and sb.server_starts == 2  # the sandbox was replaced and works
        env.close()
