"""Sandbox pools and the process-wide cap: reuse after reset, blocking at the cap, sharing, CodeExec rollouts."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
import warnings

import pytest
from _helpers import pids_with

from aligngym.sandboxes import SandboxError, bwrap_available, make_sandbox
from aligngym.sandboxes.cap import live_sandboxes, set_max_sandboxes
from aligngym.sandboxes.pool import SandboxPool, get_pool

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this machine")
MODES = [pytest.param(True, id="bwrap", marks=needs_bwrap), pytest.param(False, id="unisolated")]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the unisolated warning
        yield


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("use_bwrap", MODES)
def test_reuse_after_reset_leaves_no_files_or_processes(use_bwrap):
    with SandboxPool("local", size=1, timeout=5, use_bwrap=use_bwrap) as pool:
        first = pool.acquire()
        first.write_files({"given.txt": "x", "sub/dir/deep.txt": "y"})
        assert first.run("open('made.txt', 'w').write('z'); import os; os.symlink('/etc', 'link')").ok
        marker = f"agym-pool-{uuid.uuid4().hex}"
        results = []
        runner = threading.Thread(
            target=lambda: results.append(first.run(f"exec -a {marker} sleep 30", "bash", timeout=60))
        )
        runner.start()
        assert _wait_for(lambda: pids_with(marker))
        pool.release(first)  # episode 1 ends with its program still running
        assert pids_with(marker) == []
        runner.join(5)
        assert len(results) == 1 and results[0].status != "ok"
        second = pool.acquire()
        assert second is first  # the same warm sandbox, clean
        assert second.run("import os; print(sorted(os.listdir('.')))").stdout == "[]\n"
        assert os.path.exists("/etc/passwd")  # the wipe never followed the planted link
        stats = pool.stats()
        assert (stats.created, stats.reused, stats.in_use, stats.peak) == (1, 1, 1, 1)
        pool.release(second)
        with pytest.raises(ValueError, match="released twice"):
            pool.release(second)
    assert second._closed  # closing the pool closed its idle sandbox


def test_cap_blocks_until_a_sandbox_closes_and_times_out(room):
    room(2)
    first = make_sandbox("local", use_bwrap=False)
    second = make_sandbox("local", use_bwrap=False)
    got = []
    waiter = threading.Thread(target=lambda: got.append(make_sandbox("local", use_bwrap=False)))
    waiter.start()
    time.sleep(0.3)
    assert got == [] and waiter.is_alive()  # the third sandbox waits for a slot
    first.close()
    waiter.join(5)
    assert len(got) == 1 and not waiter.is_alive()
    start = time.monotonic()
    with pytest.raises(SandboxError, match="no sandbox slot became free within 0.2s"):
        make_sandbox("local", use_bwrap=False, slot_timeout=0.2)
    assert time.monotonic() - start >= 0.2  # it waited its slot_timeout (how much longer: load, not logic)
    before = live_sandboxes()
    second.close()
    second.close()  # a second close gives back nothing more
    got[0].close()
    assert live_sandboxes() == before - 2


def test_cap_awaits_in_async_pools_and_prefers_a_released_sandbox(room):
    room(2)

    async def main():
        pool = SandboxPool("local", timeout=5, use_bwrap=False)
        try:
            a, b = await pool.aacquire(), await pool.aacquire()
            waiter = asyncio.create_task(pool.aacquire())
            await asyncio.sleep(0.3)
            assert not waiter.done()  # at the cap: it awaits, and the loop keeps running meanwhile
            await pool.arelease(a)
            c = await asyncio.wait_for(waiter, 5)
            assert c is a  # the released sandbox, reset, rather than a new one
            with pytest.raises(SandboxError, match="no sandbox slot"):
                await pool.aacquire(timeout=0.2)
            cancelled = asyncio.create_task(pool.aacquire())
            await asyncio.sleep(0.05)
            cancelled.cancel()
            await pool.arelease(b)
            assert pool.stats().idle == 1  # the cancelled waiter took nothing
            return pool.stats()
        finally:
            pool.close()

    stats = asyncio.run(main())
    assert (stats.created, stats.reused, stats.peak) == (2, 1, 2)


def test_idle_sandboxes_of_one_pool_make_room_for_another(room):
    room(1)
    with SandboxPool("local", use_bwrap=False) as one, SandboxPool("local", use_bwrap=False) as other:
        with one.sandbox():
            pass  # now idle in `one`, holding the only free slot
        with other.sandbox(timeout=2) as sb:
            assert sb.run("print(1)").ok
        assert one.stats().idle == 0 and one.stats().discarded == 1


def test_pool_size_bounds_acquire():
    with SandboxPool("local", size=1, use_bwrap=False) as pool:
        held = pool.acquire()
        with pytest.raises(SandboxError, match="size 1"):
            pool.acquire(timeout=0.2)
        threading.Timer(0.2, pool.release, [held]).start()
        assert pool.acquire(timeout=5) is held


def test_get_pool_is_shared_per_backend_and_config():
    pool = get_pool("local", timeout=7, use_bwrap=False)
    assert get_pool("local", timeout=7, use_bwrap=False) is pool
    assert get_pool("local", timeout=8, use_bwrap=False) is not pool
    with pool.sandbox() as sb:
        sb.write_files({"a.txt": "1"})
    with pool.sandbox() as again:
        assert again is sb and again.run("import os; print(os.listdir('.'))").stdout == "[]\n"
    with pytest.raises(ValueError):
        set_max_sandboxes(0)


@needs_bwrap
def test_code_exec_rollout_uses_at_most_concurrency_sandboxes(tmp_path):
    from aligngym.agents import ScriptedAgent
    from aligngym.rollout import rollout

    answer = "```python\ndef add(a, b):\n    return a + b\n```"
    kwargs = {"sandbox": "local", "sandbox_kwargs": {"memory_mb": 511}}  # a pool of this test's own
    summary = asyncio.run(
        rollout(
            "aligngym/CodeExec-v0",
            ScriptedAgent([answer]),
            episodes=40,
            concurrency=8,
            env_kwargs=kwargs,
            out=tmp_path / "out.jsonl",
            progress=False,
        )
    )
    assert summary.written == 40
    stats = get_pool("local", timeout=10.0, memory_mb=511).stats()
    assert stats.created <= 8 and stats.peak <= 8 and stats.in_use == 0
    assert stats.idle == stats.created - stats.discarded


@pytest.mark.parametrize(
    "env_id, action",
    [("aligngym/CodeExec-v0", "```python\nprint(1)\n```"), ("aligngym/Terminal-v0", "ls")],
)
def test_a_finished_episode_gives_its_sandbox_back(room, env_id, action):
    import aligngym

    room(1)
    kwargs = {"sandbox": "local", "max_turns": 1, "sandbox_kwargs": {"slot_timeout": 3}}
    first, second = aligngym.make(env_id, **kwargs), aligngym.make(env_id, **kwargs)
    try:
        for env in (first, second, first):  # without the hand-back, `second` would wait out its 3 s and fail
            env.reset(seed=0)
            *_, terminated, truncated, _ = env.step(action)
            assert terminated or truncated
    finally:
        first.close()
        second.close()


class _SharedTickets:
    """A ``ClusterGate`` over a plain counter: two holders share ``limit`` tickets (as Ray workers would)."""

    def __init__(self, limit: int):
        self.limit, self.held, self.waiting, self.peak = limit, 0, False, 0

    def take(self) -> bool:
        if self.held < self.limit:
            self.held += 1
            self.peak = max(self.peak, self.held)
            return True
        self.waiting = True
        return False

    def give(self) -> None:
        self.held -= 1

    def others_waiting(self) -> bool:
        return self.waiting


def test_cluster_gate_caps_creation_and_takes_back_idle_tickets(room):
    from aligngym.sandboxes.cap import set_cluster_gate

    room(10)  # the process-wide cap is not what limits here
    gate = _SharedTickets(limit=1)
    gate.held = 1  # another process holds the only ticket
    set_cluster_gate(gate)
    try:
        with SandboxPool("local", use_bwrap=False) as pool:
            with pytest.raises(SandboxError, match="cluster-wide sandbox cap"):
                pool.acquire(timeout=0.3)
            gate.held, gate.waiting = 0, False  # the other process closed its sandbox
            with pool.sandbox(timeout=2) as sb:
                assert sb.run("print(1)").ok and gate.held == 1
            assert pool.stats().idle == 1 and gate.held == 1  # idle still holds its ticket
            gate.waiting = True  # someone elsewhere waits: the idle sandbox is closed for them
            assert _wait_for(lambda: gate.held == 0, timeout=3)
            assert pool.stats().idle == 0 and gate.peak == 1
    finally:
        set_cluster_gate(None)
