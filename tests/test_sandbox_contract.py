"""The ``Sandbox`` contract and the cap's slots: what every backend may rely on, without duck typing.

* A slot that a pool takes reaches the backend as an argument; each slot goes back exactly once.
* The base class gives a backend ``run``, ``read_file``, ``acreate`` and a ``reset`` that refuses.
* ``sandboxes.base`` alone says what an isolated run is: the fork server and the docker executor take the
  flags and the environment from each request.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping

import pytest
from _helpers import NEEDS_DOCKER

from aligngym.sandboxes import (
    BACKENDS,
    DockerPool,
    DockerSandbox,
    LocalSandbox,
    SandboxError,
    bwrap_available,
    make_sandbox,
)
from aligngym.sandboxes import base as base_mod
from aligngym.sandboxes.base import ISOLATED_FLAGS, Language, RunResult, Sandbox, SandboxConfig, Slot
from aligngym.sandboxes.cap import (
    acquire_slot,
    live_sandboxes,
    try_acquire_slot,
)
from aligngym.sandboxes.pool import SandboxPool

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this machine")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the unisolated warning
        yield


class MemorySandbox(Sandbox):
    """A backend of the bare contract: files in a dict, a run echoes its code. It holds its slot itself."""

    made: list[MemorySandbox] = []

    def __init__(self, config: SandboxConfig | None = None, *, slot: Slot | None = None):
        self.config = config or SandboxConfig()
        self._slot = slot if slot is not None else acquire_slot(self.config.slot_timeout)
        self.files: dict[str, bytes] = {}
        self.closed = False
        MemorySandbox.made.append(self)

    async def arun(
        self,
        code: str,
        language: Language = "python",
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        isolated: bool = False,
    ) -> RunResult:
        self._run_limit(language, timeout)
        return RunResult("ok", stdout=code)

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        self.files.update({k: v.encode() if isinstance(v, str) else v for k, v in files.items()})

    def read_bytes(self, path: str) -> bytes:
        return self.files[path]

    def close(self) -> None:
        self.closed = True
        self._give_back_slot()


@pytest.fixture
def memory_backend(monkeypatch):
    monkeypatch.setitem(BACKENDS, "memory", MemorySandbox)
    MemorySandbox.made = []
    return MemorySandbox


# -- slots --------------------------------------------------------------------------------------------
def test_a_slot_given_to_a_backend_is_the_one_it_holds_and_goes_back_once(room):
    room(1)
    slot = try_acquire_slot()
    assert slot is not None and try_acquire_slot() is None  # the cap is full now
    sandbox = make_sandbox("local", use_bwrap=False, slot=slot, slot_timeout=0.5)  # would wait, else fail
    before = live_sandboxes()
    sandbox.close()
    assert not slot.held and live_sandboxes() == before - 1
    slot.release()  # a second holder giving it back (a pool after a failed creation) counts nothing more
    sandbox.close()
    assert live_sandboxes() == before - 1


def test_a_pool_hands_its_slot_to_the_backend(memory_backend, monkeypatch):
    # Counted, not inferred from the process-wide cap: other tests' background sandboxes (docker spares,
    # pools being collected) change the live count at any moment under xdist.
    taken, take = [], acquire_slot

    def counting(timeout: float) -> Slot:
        taken.append(timeout)
        return take(timeout)

    monkeypatch.setitem(globals(), "acquire_slot", counting)
    with SandboxPool("memory", slot_timeout=0.5) as pool:
        sandbox = pool.acquire()
        assert sandbox._slot is not None and sandbox._slot.held
        assert taken == []  # the backend took no slot of its own: it holds the pool's
        with make_sandbox("memory", slot_timeout=0.2) as direct:
            assert taken == [0.2] and direct._slot.held  # made outside a pool, it takes its own
        pool.release(sandbox)  # it cannot reset: closed, and its slot back
    assert len(memory_backend.made) == 2 and sandbox.closed and not sandbox._slot


def test_a_failed_creation_gives_the_pools_slot_back(room, monkeypatch):
    room(1)
    given: list[Slot | None] = []

    def broken(config: SandboxConfig, *, slot: Slot | None = None) -> Sandbox:
        given.append(slot)
        raise SandboxError("this backend cannot start")

    monkeypatch.setitem(BACKENDS, "broken", broken)
    before = live_sandboxes()
    with SandboxPool("broken", slot_timeout=0.5) as pool:
        for _ in range(2):  # a leaked slot would make the second attempt wait out the cap instead
            with pytest.raises(SandboxError, match="cannot start"):
                pool.acquire()
    assert live_sandboxes() == before and len(given) == 2 and not any(slot.held for slot in given)


# -- the base class -----------------------------------------------------------------------------------
def test_the_base_class_gives_run_read_file_and_a_reset_that_refuses(memory_backend):
    with make_sandbox("memory") as sandbox:
        sandbox.write_files({"a.txt": "héllo"})
        assert sandbox.read_file("a.txt") == "héllo" and sandbox.run("print(1)").stdout == "print(1)"
        with pytest.raises(ValueError, match="unknown language"):
            sandbox.run("x", language="ruby")  # type: ignore[arg-type]
        with pytest.raises(SandboxError, match="cannot be reset"):
            sandbox.reset()
    assert sandbox.closed


def test_a_pool_closes_what_its_backend_cannot_reset(memory_backend):
    with SandboxPool("memory") as pool:
        first = pool.acquire()
        pool.release(first)
        second = pool.acquire()
        pool.release(second)
    assert first is not second and first.closed and pool.stats().discarded == 2


def test_acreate_awaits_a_slot_without_blocking_the_loop(room):
    room(1)
    held = make_sandbox("local", use_bwrap=False)
    # Blocking the loop instead, the creation would fail after its 5 s before the loop went on: no hang.
    config = SandboxConfig(use_bwrap=False, slot_timeout=5)

    async def main() -> tuple[bool, Sandbox]:
        creation = asyncio.ensure_future(LocalSandbox.acreate(config))
        for _ in range(20):  # the loop runs on while the creation waits for the only slot
            await asyncio.sleep(0.01)
        waited = not creation.done()
        held.close()
        return waited, await asyncio.wait_for(creation, 10)

    waited, created = asyncio.run(main())
    assert waited and created.run("print(1)").stdout == "1\n"
    created.close()


# -- one source for isolated runs ---------------------------------------------------------------------
ISOLATED_KINDS = [
    pytest.param("local", {"use_bwrap": True}, id="fork", marks=needs_bwrap),
    pytest.param("local", {"use_bwrap": True, "fork_server": False}, id="oneshot", marks=needs_bwrap),
    pytest.param("docker", {}, id="docker", marks=NEEDS_DOCKER),
]


@pytest.mark.parametrize("backend, options", ISOLATED_KINDS)
def test_isolated_runs_take_their_flags_and_environment_from_base(backend, options, monkeypatch):
    flags = (*ISOLATED_FLAGS["python"], "-X", "utf8")
    monkeypatch.setitem(ISOLATED_FLAGS, "python", flags)  # type: ignore[index]
    monkeypatch.setattr(base_mod, "ISOLATED_HOME", "/nonexistent-per-request")
    config = SandboxConfig(timeout=20, **options)
    # Docker on a pool of its own without spares: the shared one would go on starting spares after the test,
    # which hold slots under the cap that other tests count.
    docker_pool = DockerPool(size=0) if backend == "docker" else None
    try:
        sandbox = DockerSandbox(config, pool=docker_pool) if docker_pool else make_sandbox(backend, config)
        with sandbox:
            program = "import os, sys; print(sys.orig_argv[1:-1], os.environ['HOME'])"
            python = sandbox.run(program, isolated=True)
            bash = sandbox.run('echo "$HOME"', "bash", isolated=True)
    finally:
        if docker_pool is not None:
            docker_pool.shutdown()
    assert python.stdout == f"{list(flags)} /nonexistent-per-request\n", python
    assert bash.stdout == "/nonexistent-per-request\n", bash
