"""aligngym/Terminal-v0: every shipped task is solved by its expert and not by idling; the shell protocol."""

from __future__ import annotations

import asyncio
import json

import pytest

import aligngym
from aligngym.envs import terminal
from aligngym.envs.terminal import NO_COMMAND, TerminalEnv, TerminalTask, extract_command, load_tasks
from aligngym.envs.terminal_checks import git_holds, path_holds, same_data
from aligngym.sandboxes import DockerSandbox, LocalSandbox, make_sandbox

TASKS = load_tasks()
NOOP = "```bash\ntrue\n```"
IDLE_TURNS = 3
DOCKER_UP = terminal.docker_available()
# One or two tasks per category (the image has git since _ROOTFS_VERSION 2).
DOCKER_SUBSET = ["move-logs", "find-python-files", "private-file", "sed-config", "top-ip", "fix-average"]
DOCKER_SUBSET += [t.id for t in TASKS if t.category == "git"][:2]
docker = [
    pytest.mark.docker,
    pytest.mark.skipif(not DOCKER_UP, reason="no Docker daemon with the sandbox image (.ci/dockerd.sh)"),
]


def _bash(command: str) -> str:
    return f"```bash\n{command}\n```"


async def _expert_then_idle(backend: str, task: TerminalTask) -> None:
    """The expert solves ``task`` on its last command; replies that change nothing never do."""
    env = TerminalEnv(sandbox=backend, max_turns=len(task.expert) + 2)
    try:
        await asyncio.to_thread(env.reset, seed=0, options={"task_id": task.id})
        for i, action in enumerate(task.expert_actions(), 1):
            _, reward, terminated, truncated, info = await env.astep(action)
            assert terminated == (i == len(task.expert)) and not truncated, (task.id, i, info["messages"])
        parts = info["reward_components"]
        assert parts["success"] == 1 and parts["steps"] == len(task.expert)
        assert reward == pytest.approx(1 - 0.01 * len(task.expert))

        env.max_turns = IDLE_TURNS
        await asyncio.to_thread(env.reset, seed=0, options={"task_id": task.id})
        for i in range(1, IDLE_TURNS + 1):
            _, reward, terminated, truncated, info = await env.astep(NOOP)
            assert not terminated and truncated == (i == IDLE_TURNS), task.id
        assert info["reward_components"]["success"] == 0
        assert reward == pytest.approx(-0.01 * IDLE_TURNS)
    finally:
        env.close()


def test_shipped_tasks_are_many_and_varied():
    assert len(TASKS) >= 20
    assert {t.category for t in TASKS} >= {"files", "permissions", "text", "python", "git"}
    assert all(t.expert for t in TASKS)
    assert all(t.requires == ("git",) for t in TASKS if t.category == "git")


@pytest.mark.parametrize("task", TASKS, ids=[t.id for t in TASKS])
def test_local_expert_solves_and_idling_fails(task):
    asyncio.run(_expert_then_idle("local", task))


@pytest.mark.parametrize("task_id", [pytest.param(i, marks=docker) for i in DOCKER_SUBSET])
def test_docker_expert_solves_and_idling_fails(task_id):
    asyncio.run(_expert_then_idle("docker", next(t for t in TASKS if t.id == task_id)))


@pytest.mark.docker
@pytest.mark.skipif(not DOCKER_UP, reason="no Docker daemon with the sandbox image (.ci/dockerd.sh)")
def test_docker_is_default_and_offers_every_task():
    env = TerminalEnv()
    _, info = env.reset(seed=0)
    assert env.backend == info["backend"] == "docker" and isinstance(env.sandbox, DockerSandbox)
    assert {t.id for t in env.available_tasks()} == {t.id for t in TASKS}  # git included
    env.close()


def test_local_when_docker_is_unavailable(monkeypatch):
    monkeypatch.setattr(terminal, "docker_available", lambda image="": False)
    env = TerminalEnv(tasks=[TASKS[0]])
    env.reset(seed=0)
    assert env.backend == "local" and isinstance(env.sandbox, LocalSandbox)
    env.close()


def test_concurrent_episodes_on_the_async_path():
    picked = [t for t in TASKS if t.category in ("python", "git")][:4]

    async def all_of_them() -> None:
        await asyncio.gather(*(_expert_then_idle("local", t) for t in picked))

    asyncio.run(all_of_them())


# -- the shell protocol --------------------------------------------------------------------------------
@pytest.fixture
def env():
    env = TerminalEnv(sandbox="local", max_turns=6, timeout=2)
    env.reset(seed=0, options={"task_id": "create-file"})
    yield env
    env.close()


def test_reply_without_a_command_is_an_error_observation(env):
    for reply in [
        "I think we should look at the files first.\nThen decide.",
        "I do not know.",
        "",
        "```python\nprint(1)\n```",
    ]:
        obs, reward, terminated, truncated, info = env.step(reply)
        assert obs == NO_COMMAND and reward == 0 and not (terminated or truncated)
        assert info["reward_components"]["commands_failed"] == 0


def test_extract_command_rules():
    assert extract_command("run:\n```bash\nls\n```\nthen\n```sh\npwd\n```") == "pwd"
    assert extract_command("```\necho a\necho b\n```") == "echo a\necho b"
    assert extract_command("```bash\nls\n```\n```python\nx = 1\n```") == "ls"
    assert extract_command("cut off\n```bash\nwc -l words.txt") == "wc -l words.txt"
    assert extract_command("ls -la") == "ls -la" and extract_command("$ cat a.txt") == "cat a.txt"
    assert extract_command("Sure, here it is.") is None and extract_command("```bash\n\n```") is None


def test_output_exit_code_stderr_and_truncation(env):
    obs, *_ = env.step(_bash("echo out; echo err >&2; exit 3"))
    assert obs == "out\nerr\n[exit code 3]"
    obs, _, _, _, info = env.step(_bash("seq 1 100000"))
    assert "characters truncated" in obs and len(obs) < 2200
    assert obs.startswith("1\n2\n") and obs.endswith("100000\n[exit code 0]")
    obs, _, _, _, info = env.step("ls no-such-file")
    assert "No such file" in obs and "[exit code 2]" in obs
    assert info["reward_components"] == {"success": 0.0, "steps": 3.0, "commands_failed": 2.0}


def test_timeout_is_shown(env):
    obs, _, _, _, info = env.step(_bash("echo started; sleep 30"))
    assert obs == "started\n[timed out after 2s]"
    assert info["reward_components"]["commands_failed"] == 1


def test_files_and_directory_persist_across_turns(env):
    env.step(_bash("mkdir -p sub/dir && cd sub && echo kept > note.txt"))
    obs, _, _, _, info = env.step(_bash("pwd; cat note.txt"))
    assert obs.endswith("/sub\nkept\n[exit code 0]") and info["cwd"].endswith("/sub")
    obs, *_ = env.step(_bash("cd dir\nls .."))
    obs, *_ = env.step("pwd")
    assert obs.endswith("/sub/dir\n[exit code 0]")
    _, reward, terminated, _, info = env.step(_bash("echo 'Hello, terminal' > ../../hello.txt"))
    assert terminated and reward == pytest.approx(1 - 0.05) and info["reward_components"]["success"] == 1
    env.reset(seed=0, options={"task_id": "create-file"})  # a new episode starts clean, at the top
    obs, *_ = env.step(_bash("ls -A; pwd"))
    assert "sub" not in obs and "hello.txt" not in obs and not obs.rstrip().endswith("/sub/dir")


def test_same_seed_same_task():
    env = TerminalEnv(sandbox="local")
    first = [env.reset(seed=s)[1]["task_id"] for s in range(8)]
    assert first == [env.reset(seed=s)[1]["task_id"] for s in range(8)] and len(set(first)) > 3
    assert env.reset(seed=5)[0] == env.reset(seed=5)[0]
    env.close()


def test_registered_and_made_by_id():
    env = aligngym.make("aligngym/Terminal-v0", sandbox="local", max_turns=2)
    obs, info = env.reset(seed=1)
    assert "```bash" in obs and info["task_id"] in {t.id for t in TASKS}
    env.close()


# -- tasks and sandboxes given by the caller -------------------------------------------------------------
ROW = {
    "id": "greet",
    "goal": "Create greet.txt.",
    "setup": "echo hi > seed.txt",
    "check": "[ -f greet.txt ]",
    "expert": ["touch greet.txt"],
}


def test_tasks_from_a_list_or_a_jsonl_path(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + json.dumps({**ROW, "id": "greet-2"}) + "\n")
    for source in ([ROW], str(path), path):
        env = TerminalEnv(tasks=source, sandbox="local", max_turns=2)
        obs, info = env.reset(seed=0)
        assert obs.startswith("Create greet.txt.")
        assert env.step(_bash("cat seed.txt && touch greet.txt"))[2]
        env.close()


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "no-check", "goal": "g"}], "no-check.*'expect'.*'check'"),
        ([{**ROW, "id": "empty", "expect": []}], "empty.*'expect' must be a non-empty list"),
        (
            [{**ROW, "id": "abs", "expect": [{"path": "/etc/passwd", "text": "x"}]}],
            r"abs'. expect\[0\].*relative",
        ),
        ([{**ROW, "id": "up", "expect": [{"path": "a/../../x"}]}], "up.*without '..'"),
        ([{**ROW, "id": "two", "expect": [{"path": "a", "git": ["log"]}]}], "two.*exactly one"),
        ([{**ROW, "id": "opt", "expect": [{"git": ["-c", "core.pager=x", "log"]}]}], "opt.*subcommand"),
        ([{**ROW, "id": "nocalls", "expect": [{"python": "calc"}]}], "nocalls.*'calls'"),
        ([{**ROW, "id": "mode", "expect": [{"path": "a", "mode": 600}]}], "mode.*octal"),
        ([{**ROW, "id": "key", "expect": [{"path": "a", "txt": "x"}]}], "key.*unknown key.*txt"),
        ([{**ROW, "id": "re", "expect": [{"git": ["log"], "match": "("}]}], "re.*regular expression"),
        ([{**ROW, "id": "gone", "expect": [{"path": "a", "exists": False, "text": ""}]}], "gone.*absent"),
        ([{**ROW, "id": "typo", "chek": "true"}], "typo.*unknown field.*chek"),
        ([{**ROW, "id": "bad-expert", "expert": "ls"}], "bad-expert.*expert"),
        ([{**ROW, "id": "bad-req", "requires": ["git; rm"]}], "bad-req.*requires"),
        ([ROW, ROW], "greet.*duplicate"),
        ([ROW, "not a task"], "#1"),
        ([], "no terminal tasks"),
    ],
)
def test_malformed_task_is_a_value_error_naming_it(rows, message):
    with pytest.raises(ValueError, match=message):
        TerminalEnv(tasks=rows, sandbox="local")


def test_expect_items_judge_facts_as_documented():
    file = {"type": "file", "mode": 0o640, "data": b"line\n\n"}
    assert path_holds({"path": "f", "text": "line"}, file) and path_holds(
        {"path": "f", "text": "line\n"}, file
    )
    assert not path_holds({"path": "f", "text": "line "}, file)
    assert path_holds({"path": "f", "stripped": "line"}, {**file, "data": b" li ne\t\n"})
    assert path_holds({"path": "f", "match": "l.*e"}, file) and not path_holds(
        {"path": "f", "match": "l"}, file
    )
    assert path_holds({"path": "f", "mode": "640", "executable": False}, file)
    assert not path_holds({"path": "f", "mode": "644"}, file) and not path_holds(
        {"path": "f"}, {"type": "link"}
    )
    assert not path_holds({"path": "f", "entries": []}, file)  # a file is not a directory
    assert path_holds({"path": "f", "exists": False}, {"type": "missing"})
    assert not path_holds({"path": "f", "exists": False}, {"type": "blocked"})  # behind a link: not absent
    folder = {"type": "dir", "mode": 0o755, "entries": ["a", "b"]}
    assert path_holds({"path": "d", "entries": ["b", "a"]}, folder) and not path_holds(
        {"path": "d", "text": ""}, folder
    )
    data = b'{"port": 8080, "debug": false, "tags": [1.0]}'
    assert path_holds(
        {"path": "c", "json": {"port": 8080.0, "debug": False, "tags": [1]}}, {**file, "data": data}
    )
    assert not path_holds(
        {"path": "c", "json": {"port": 8080, "debug": 0, "tags": [1]}}, {**file, "data": data}
    )
    assert not path_holds(
        {"path": "c", "text": "x"}, {"type": "file", "mode": 0o644}
    )  # unreadable or too big
    assert git_holds({"git": ["log"], "text": "a"}, {"exit": 0, "stdout": b"a\n"})
    assert not git_holds({"git": ["log"]}, {"exit": 1}) and git_holds(
        {"git": ["log"], "exit": 1}, {"exit": 1}
    )
    assert not git_holds({"git": ["log"]}, {"exit": None})  # it did not run (no repository, or refused)
    assert (
        same_data([1, {"a": None}], [1.0, {"a": None}]) and not same_data(True, 1) and not same_data(1, True)
    )


def test_a_user_task_with_expect():
    row = {
        "id": "u",
        "goal": "Make out.txt say 3 and keep calc.",
        "setup": "echo 'def f(x): return x' > m.py",
    }
    row["expect"] = [
        {"path": "out.txt", "stripped": "3"},
        {"python": "m", "calls": [["f", [[1, 2]], [1, 2]]]},
    ]
    env = TerminalEnv(tasks=[row], sandbox="local", max_turns=2)
    env.reset(seed=0)
    assert not env.step(_bash("echo 4 > out.txt"))[2]
    assert env.step(_bash("echo ' 3' > out.txt"))[2]
    env.close()


def test_missing_requirement_filters_the_task_and_bad_setup_names_it():
    rows = [ROW, {**ROW, "id": "needs-tool", "requires": ["no-such-tool-xyz"]}]
    env = TerminalEnv(tasks=rows, sandbox="local")
    assert all(env.reset(seed=s)[1]["task_id"] == "greet" for s in range(5))
    with pytest.raises(ValueError, match="needs-tool"):
        env.reset(options={"task_id": "needs-tool"})
    env.close()
    only_missing = TerminalEnv(tasks=rows[1:], sandbox="local")
    with pytest.raises(ValueError, match="lacks.*no-such-tool-xyz"):
        only_missing.reset(seed=0)
    only_missing.close()
    broken = TerminalEnv(tasks=[{**ROW, "id": "broken-setup", "setup": "exit 7"}], sandbox="local")
    with pytest.raises(RuntimeError, match="broken-setup"):
        broken.reset(seed=0)
    broken.close()


def test_a_given_sandbox_is_emptied_each_episode_and_left_open():
    with make_sandbox("local", timeout=5) as sandbox:
        env = TerminalEnv(tasks=[ROW], sandbox=sandbox, max_turns=2)
        env.reset(seed=0)
        env.step(_bash("mkdir -p x/y && chmod 500 x && touch stray"))
        env.reset(seed=0)
        assert env.step(_bash("ls -A"))[0] == "seed.txt\n[exit code 0]"
        env.close()
        assert sandbox.run("echo open", "bash").stdout == "open\n"
