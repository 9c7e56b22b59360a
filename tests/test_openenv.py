"""OpenEnv both ways, on loopback: ``aligngym serve`` driven by openenv-core's own client, and
``aligngym/OpenEnv-v0`` playing openenv-core's example env (``openenv init``) and a served aligngym env.

A served env is a reward oracle, so the adversarial tests speak the raw protocol (WebSocket and HTTP) the
way a hostile client would: env arguments slipped into a reset, steps before a reset and after done, odd
seeds, reading the hidden answer through ``state`` or the observation, one session reaching another's.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from _helpers import run_cli, solve

pytest.importorskip("openenv", reason="OpenEnv is the optional extra aligngym[openenv]")

#: A server's process imports openenv-core, which imports gradio: seconds on a loaded machine.
START_TIMEOUT_S = 120
SERVED_KWARGS = {"format_weight": 0}  # reward is exactly the ``correct`` component: 1 or 0
MAX_SESSIONS = 3


class Server:
    """A server process, its base URL (read from what it prints) and everything it printed."""

    def __init__(self, cmd: list[str], ready: str, cwd: str | None = None, env: dict | None = None):
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would stall the server
        self.url = self._wait_for(re.compile(ready))
        self._wait_healthy()

    def _drain(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            self.lines.put(line)

    def _wait_for(self, ready: re.Pattern) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            found = ready.search(line)
            if found:
                return found.group(1)
        self.stop()
        raise AssertionError(f"server did not start: {''.join(self.output)}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = http(self.url, "GET", "/health")
            if status == 200 and body.get("status") == "healthy":
                return
            time.sleep(0.05)  # polling, not waiting out a guess
        raise AssertionError("server never reported healthy")

    def stop(self) -> bool:
        """SIGTERM; whether the server then stopped by itself (uvicorn shuts down and re-raises the signal)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False


def http(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one plain HTTP request; status 0 when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"text": text.decode(errors="replace")}
    except OSError:
        return 0, {}


class Session:
    """One raw WebSocket session: send a protocol message, get the server's answer."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.ws = connect(url.replace("http://", "ws://") + "/ws", open_timeout=30)

    def send(self, type_: str, data: dict | None = None) -> dict:
        message = {"type": type_} if data is None else {"type": type_, "data": data}
        self.ws.send(json.dumps(message))
        return json.loads(self.ws.recv(timeout=30))

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def admitted(url: str, seed: int) -> tuple[Session, str]:
    """A session that got a slot and reset to ``seed`` (slots of sessions just closed free up shortly)."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + 30
    while True:
        session = Session(url)
        try:
            reply = session.send("reset", {"seed": seed})
        except ConnectionClosed:  # refused at the cap: the server closed the socket
            reply = {"type": "error"}
        if reply["type"] == "observation":
            return session, reply["data"]["observation"]["text"]
        session.close()
        assert time.monotonic() < deadline, reply
        time.sleep(0.05)


def unused_answer_seed(url: str) -> tuple[int, str, int]:
    """A seed whose answer (>= 10) is not written in its own question: (seed, question, answer)."""
    with Session(url) as s:
        for seed in range(200):
            question = s.send("reset", {"seed": seed, "episode_id": "ep"})["data"]["observation"]["text"]
            answer = int(solve([{"content": question}]))
            if answer >= 10 and str(answer) not in question:
                return seed, question, answer
    raise AssertionError("no such seed in 200")


@pytest.fixture(scope="module")
def served():
    """``aligngym serve aligngym/Arithmetic-v0`` on a free loopback port, stopped (cleanly) afterwards."""
    server = Server(
        [
            *f"{sys.executable} -m aligngym serve aligngym/Arithmetic-v0 --port 0 --max-sessions".split(),
            str(MAX_SESSIONS),
            "--env-kwargs",
            json.dumps(SERVED_KWARGS),
        ],
        ready=r"over OpenEnv at (http://127\.0\.0\.1:\d+)",
    )
    yield server.url
    assert server.stop(), "".join(server.output)


# -- serve: their client on our env --------------------------------------------------------------------
@pytest.mark.slow
def test_their_client_plays_a_served_env(served):
    from openenv.core import GenericEnvClient

    with GenericEnvClient(base_url=served).sync() as client:
        first = client.reset(seed=7)
        assert first.reward is None and not first.done
        question = first.observation["text"]
        assert first.observation["messages"] == [{"role": "user", "content": question}]
        right = solve([{"content": question}])
        result = client.step({"message": right})
        assert (result.reward, result.done) == (1.0, True)
        assert result.observation["success"] is True
        assert result.observation["reward_components"] == {"correct": 1.0, "format": 1.0}
        assert result.observation["terminated"] and not result.observation["truncated"]

        again = client.reset(seed=7)
        assert again.observation["text"] == question  # the seed picks the episode
        wrong = client.step({"message": str(int(right) + 1)})
        assert (wrong.reward, wrong.done, wrong.observation["success"]) == (0.0, True, False)
        assert client.state()["step_count"] == 1


@pytest.mark.slow
def test_metadata_and_schema_describe_the_served_env(served):
    status, meta = http(served, "GET", "/metadata")
    assert status == 200 and meta["name"] == "aligngym/Arithmetic-v0" and meta["description"]
    status, schema = http(served, "GET", "/schema")
    assert status == 200 and schema["action"]["required"] == ["message"]
    assert {"text", "reward_components", "success"} <= set(schema["observation"]["properties"])


@pytest.mark.slow
def test_serve_refuses_bad_arguments_before_binding():
    for args, message in [
        (["aligngym/Nope-v0"], "unknown environment id"),
        (["aligngym/Debate-v0"], "multi-agent"),
        (["aligngym/Arithmetic-v0", "--env-kwargs", '{"max_operand": 0}'], "max_operand must be >= 1"),
        (["aligngym/Arithmetic-v0", "--env-kwargs", "[1]"], "must be a JSON object"),
        (["aligngym/Arithmetic-v0", "--port", "70000"], "--port must be in 0..65535"),
        (["aligngym/OpenEnv-v0"], "needs base_url"),
    ]:
        result = run_cli("serve", *args, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "serving" not in result.stdout


@pytest.mark.slow
def test_serve_says_when_the_port_is_taken(served):
    port = served.rsplit(":", 1)[1]
    result = run_cli("serve", "aligngym/Arithmetic-v0", "--port", port, timeout=120)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- serve: what a hostile client cannot do ------------------------------------------------------------
@pytest.mark.slow
def test_a_client_cannot_pass_env_kwargs(served):
    with Session(served) as s:
        plain = s.send("reset", {"seed": 7})["data"]["observation"]["text"]
        slipped = {
            "max_operand": 1000,
            "operators": "*",
            "format_weight": 100,
            "options": {"max_operand": 1000},
        }
        reply = s.send("reset", {"seed": 7, **slipped})
        assert reply["type"] == "observation" and reply["data"]["observation"]["text"] == plain
        extra = s.send("step", {"message": solve([{"content": plain}]), "format_weight": 100})
        assert extra["type"] == "error" and extra["data"]["code"] == "VALIDATION_ERROR"
        paid = s.send("step", {"message": solve([{"content": plain}])})["data"]
        assert paid["reward"] == 1.0  # format_weight stayed 0 as served, not 100
    status, body = http(served, "POST", "/reset", {"seed": 7, **slipped})
    assert status == 200 and body["observation"]["text"] == plain


@pytest.mark.slow
def test_no_step_after_done_or_before_reset(served):
    with Session(served) as s:
        before = s.send("step", {"message": "0"})
        assert before["type"] == "error" and "reset first" in before["data"]["message"]
        question = s.send("reset", {"seed": 3})["data"]["observation"]["text"]
        right = solve([{"content": question}])
        assert s.send("step", {"message": right})["data"]["reward"] == 1.0
        for _ in range(3):  # farming the answer it just got paid for
            again = s.send("step", {"message": right})
            assert again["type"] == "error" and "episode is over" in again["data"]["message"]
        state = s.send("state")["data"]
        assert (state["step_count"], state["done"]) == (1, True)
    # HTTP /step builds a fresh env per request: never reset, so never paid (Arithmetic's answer starts at 0).
    status, body = http(served, "POST", "/step", {"action": {"message": "0"}})
    assert status == 409 and "reset first" in body["detail"] and "reward" not in body


@pytest.mark.slow
def test_bad_seeds_are_refused_and_the_session_survives(served):
    with Session(served) as s:
        for seed in (-1, "7", True, 2**64, 1.5, [7]):
            reply = s.send("reset", {"seed": seed})
            assert reply["type"] == "error" and "seed must be an integer" in reply["data"]["message"], seed
        assert s.send("reset", {"seed": 1})["type"] == "observation"


@pytest.mark.slow
def test_state_and_observations_never_show_the_answer(served):
    seed, question, answer = unused_answer_seed(served)
    with Session(served) as s:
        shown = [s.send("reset", {"seed": seed, "episode_id": "ep"}), s.send("state")]
        shown.append(s.send("step", {"message": "nope"}))
        shown.append(s.send("state"))
    status, http_state = http(served, "GET", "/state")
    assert status == 200
    texts = json.dumps([shown, http_state])
    assert str(answer) not in texts and '"answer"' not in texts, texts
    assert set(shown[1]["data"]) == {"episode_id", "step_count", "done"}
    observation = shown[0]["data"]["observation"]
    keys = {"text", "messages", "reward_components", "success", "terminated", "truncated", "turn"}
    assert set(observation) == keys and observation["text"] == question


@pytest.mark.slow
def test_sessions_are_isolated_capped_and_released(served):
    sessions = [admitted(served, seed) for seed in range(MAX_SESSIONS)]
    with Session(served) as extra:  # one over the cap
        refused = json.loads(extra.ws.recv(timeout=30))
        assert refused["type"] == "error" and refused["data"]["code"] == "CAPACITY_REACHED"
    # Each session answers its own question, in another order than they began: its env is its own.
    for s, question in reversed(sessions):
        assert s.send("step", {"message": solve([{"content": question}])})["data"]["reward"] == 1.0
    sessions[0][0].close()
    late, _ = admitted(served, 0)  # the closed session's slot comes back
    late.close()
    for s, _ in sessions[1:]:
        s.close()


def test_an_env_failure_reaches_the_client_by_its_type_only(monkeypatch):
    """The env's exception text may quote what it hides (here the answer): only its type goes out."""
    import asyncio

    from gymnasium.envs import registration

    from aligngym.envs import TextEnv, register
    from aligngym.envs import registry as env_registry
    from aligngym.openenv_server import EpisodeError, ServedEnv, TextAction

    class Leaky(TextEnv):
        """Hides an answer, then fails quoting it."""

        def new_episode(self, options):
            return "guess", {"answer": "s3cr3t"}

        def turn(self, action):
            raise ValueError("the answer was s3cr3t")

    env_id = "test/Leaky-v0"
    # Copies of both registries, put back afterwards: no other test sees this env.
    monkeypatch.setattr(env_registry, "_ENTRIES", dict(env_registry._ENTRIES))
    monkeypatch.setattr(registration, "registry", dict(registration.registry))
    register(env_id, Leaky)
    served = ServedEnv(env_id, {})

    async def play():
        first = await served.reset_async(seed=1)
        assert "s3cr3t" not in first.model_dump_json()
        with pytest.raises(EpisodeError) as failed:
            await served.step_async(TextAction(message="x"))
        assert "s3cr3t" not in str(failed.value) and "ValueError" in str(failed.value)
        with pytest.raises(EpisodeError, match="episode is over"):
            await served.step_async(TextAction(message="x"))

    asyncio.run(play())
    assert "s3cr3t" not in served.state.model_dump_json()
    served.close()
    served.close()


# -- OpenEnv-v0: our env on their server ---------------------------------------------------------------
def test_openenv_env_needs_a_base_url():
    import aligngym

    with pytest.raises(ValueError, match="needs base_url"):
        aligngym.make("aligngym/OpenEnv-v0")


@pytest.mark.slow
def test_openenv_env_plays_a_served_env_and_releases_its_session(served):
    import aligngym

    for _ in range(2 * MAX_SESSIONS):  # more envs than sessions: each close gives its slot back
        env = aligngym.make("aligngym/OpenEnv-v0", base_url=served, success_component="success")
        question, _ = env.reset(seed=5)
        _, reward, terminated, truncated, info = env.step(solve([{"content": question}]))
        assert (reward, terminated, truncated) == (1.0, True, False)
        assert info["reward_components"] == {"correct": 1.0, "format": 1.0, "success": 1.0}
        env.close()
        env.close()


@pytest.fixture
def their_example(tmp_path):
    """openenv-core's example env, generated by ``openenv init`` and served by uvicorn on a free port."""
    bin_dir = os.path.dirname(sys.executable)
    # Only the interpreter on PATH: `openenv init` would otherwise run `uv lock`, which goes to the network.
    env = {**os.environ, "PATH": bin_dir}
    init = subprocess.run(
        [sys.executable, "-m", "openenv.cli", "init", "echo_probe", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    project = tmp_path / "echo_probe"
    assert (project / "server" / "app.py").exists()
    server = Server(
        [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", "0"],
        ready=r"Uvicorn running on (http://127\.0\.0\.1:\d+)",
        cwd=str(project),
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    yield server.url
    server.stop()


@pytest.mark.slow
def test_rollout_on_their_example_env(their_example, chat_server, tmp_path):
    replies = ["hello", "hi there", "bye!"]
    chat = chat_server(replies)
    out = tmp_path / "rows.jsonl"
    result = run_cli(
        *["rollout", "aligngym/OpenEnv-v0", "--model", "scripted", "--episodes", "2", "--no-progress"],
        *("--base-url", chat.base_url, "--out", out),
        *("--concurrency", 1),  # the template serves one session at a time (max_concurrent_envs=1)
        "--env-kwargs",
        json.dumps({"base_url": their_example, "max_turns": 3}),
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    from aligngym import read_trajectories

    rows = read_trajectories(out)
    assert len(rows) == 2
    for row in rows:
        assert not row["error"] and row["turns"] == 3 and row["truncated"] and not row["terminated"]
        # The echo env pays 0.1 per character and echoes the message back as the next observation.
        assert row["rewards"] == pytest.approx([0.1 * len(r) for r in replies])
        users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        assert users == ["Echo Probe environment ready!", *replies[:-1]]
        assert row["success"] is None  # the echo env has no notion of success
        assert row["env_kwargs"]["base_url"] == their_example
        assert row["info"]["openenv_observation"] == {"echoed_message": "bye!", "message_length": 4}


@pytest.mark.slow
def test_conformance_of_openenv_env_against_a_served_env(served):
    import aligngym

    check = getattr(aligngym, "check_conformance", None)
    if check is None:
        from aligngym.conformance import check_conformance as check

    check("aligngym/OpenEnv-v0", {"base_url": served})
