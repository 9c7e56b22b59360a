"""The docker executor's lane: a host unix socket that carries messages without the daemon in the path."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
from _helpers import NEEDS_DOCKER

from aligngym.sandboxes import DockerPool, DockerSandbox, SandboxConfig, SandboxError, ensure_image
from aligngym.sandboxes.docker_channel import Lane


def test_the_lane_accepts_only_the_connection_that_brings_the_token():
    lane = Lane()
    path = os.path.join(lane.dir, Lane.NAME)
    token = os.urandom(16).hex()
    try:
        impostor = socket.socket(socket.AF_UNIX)
        impostor.connect(path)
        impostor.sendall(b"0" * Lane.TOKEN_BYTES)  # a wrong token of the right length
        executor = socket.socket(socket.AF_UNIX)
        executor.connect(path)
        executor.sendall(token.encode())
        conn = lane.accept(token, timeout=10)
        conn.sendall(b"ping")
        assert executor.recv(4) == b"ping"  # the connection handed back is the one with the token
        assert impostor.recv(1) == b""  # the impostor was hung up on
        conn.close()
    finally:
        lane.close()
    assert not os.path.exists(lane.dir)  # nothing is left to connect to once the executor is in


def test_a_lane_nobody_connects_to_times_out_with_a_clear_error():
    lane = Lane()
    try:
        with pytest.raises(SandboxError, match="did not connect its lane"):
            lane.accept("x" * Lane.TOKEN_BYTES, timeout=0.2)
    finally:
        lane.close()


def docker_test(fn):
    for mark in NEEDS_DOCKER:
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def image() -> str:
    return ensure_image()


@docker_test
def test_programs_cannot_reach_the_lane_and_the_host_does(image):
    with DockerSandbox(SandboxConfig(timeout=10)) as sandbox:
        assert sandbox._container.channel._lane is not None  # messages go over the lane
        code = """
import os, socket
try:
    print(os.listdir("/run/aligngym"))
except OSError as exc:
    print(type(exc).__name__)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/run/aligngym/lane.sock")
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
try:
    open("/run/aligngym/lane.sock", "w")
except OSError as exc:
    print(type(exc).__name__)
"""
        r = sandbox.run(code)
        assert r.stdout.splitlines() == ["PermissionError", "FileNotFoundError", "FileNotFoundError"], r
        data = os.urandom(3 << 20)
        sandbox.write_files({"blob.bin": data})
        assert hashlib.sha256(sandbox.read_bytes("blob.bin")).digest() == hashlib.sha256(data).digest()


@docker_test
def test_without_a_lane_the_attach_stream_carries_everything(image, monkeypatch):
    # Daemons on another machine (tcp, ssh) cannot bind-mount our socket: the old path must still work.
    monkeypatch.setenv("ALIGNGYM_DOCKER_LANE", "0")
    pool = DockerPool(size=0, max_live=2)
    try:
        with DockerSandbox(SandboxConfig(timeout=10), pool=pool) as sandbox:
            assert sandbox._container.channel._lane is None
            data = os.urandom(3 << 20)
            sandbox.write_files({"blob.bin": data})
            assert sandbox.read_bytes("blob.bin") == data
            r = sandbox.run("import sys; print(len(sys.stdin.buffer.read()))", stdin=data)
            assert r.stdout == f"{len(data)}\n", r
    finally:
        pool.shutdown()


@docker_test
def test_closing_ends_the_executor_that_listens_on_both_ends(image):
    import docker

    pool = DockerPool(size=0, max_live=2)
    try:
        sandbox = DockerSandbox(SandboxConfig(timeout=10), pool=pool)
        cid = sandbox.container_id
        # Only the attach stream closes: the executor must still take that as the host going away.
        sandbox._container.channel._sock.shutdown(socket.SHUT_RDWR)
        gone = threading.Event()

        def wait_gone():
            try:
                docker.from_env().api.wait(cid, timeout=30)
            except Exception:
                pass
            gone.set()

        threading.Thread(target=wait_gone, daemon=True).start()
        assert gone.wait(30)
        sandbox.close()
    finally:
        pool.shutdown()
