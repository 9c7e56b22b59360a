"""Shared fixtures: a real OpenAI-protocol server in a thread, temporary output paths."""

from __future__ import annotations

import os

import pytest

# TRL marks rollout_func experimental and warns on every trainer; the tests know.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def pytest_configure(config):
    """With a Docker daemon up, build the sandbox image first (once per machine; a build lock serialises
    xdist workers): docker tests then run on a fresh machine instead of skipping for want of an image."""
    from _helpers import docker_up

    if docker_up():
        from aligngym.sandboxes import ensure_image

        ensure_image()


@pytest.fixture
def chat_server():
    """Start an honest OpenAI-protocol server answering from a script; yields a factory for custom ones."""
    from aligngym.agents.server import ScriptedChatServer

    servers = []

    def start(responder, **kwargs):
        ctx = ScriptedChatServer(responder, **kwargs).run_in_thread()
        server = ctx.__enter__()
        servers.append(ctx)
        return server

    yield start
    for ctx in servers:
        ctx.__exit__(None, None, None)


@pytest.fixture
def room():
    """``room(n)`` sets the sandbox cap to what is live now plus ``n``; the old cap comes back afterwards."""
    from aligngym.sandboxes.cap import evict_idle, live_sandboxes, max_sandboxes, set_max_sandboxes

    saved = max_sandboxes()
    while evict_idle():  # idle sandboxes of other tests' pools would blur the count
        pass

    def set_room(n: int) -> None:
        set_max_sandboxes(live_sandboxes() + n)

    yield set_room
    set_max_sandboxes(saved)


@pytest.fixture
def scratch():
    """``scratch(cls, **kwargs)`` registers ``cls`` under a test id for this test only; returns the id."""
    import gymnasium as gym

    from aligngym.envs import register, registry

    ids = []

    def add(cls, **kwargs):
        kind = "Multi" if kwargs.get("multi_agent") else ""
        env_id = f"conformance-test/{kind}{cls.__name__}-v0"
        register(env_id, cls, **kwargs)
        ids.append(env_id)
        return env_id

    yield add
    for env_id in ids:
        registry._ENTRIES.pop(env_id, None)
        gym.registry.pop(env_id, None)
