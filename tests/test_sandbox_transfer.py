"""Docker file transfers against a stand-in executor: the chunks of all files share one window, and a failure
names exactly which files were written (the docker end to end twin is in test_sandbox_faults.py)."""

from __future__ import annotations

import concurrent.futures
import itertools
from typing import Any

import pytest

from aligngym.sandboxes import SandboxError
from aligngym.sandboxes import docker_transfer as transfer

CHUNK = transfer.CHUNK_BYTES


class _Reply(concurrent.futures.Future):
    """A reply whose wait is recorded, so the test sees sends and waits in their order."""

    def __init__(self, channel: FakeChannel, path: str, hang: bool):
        super().__init__()
        self.channel, self.path, self.hang = channel, path, hang

    def result(self, timeout: float | None = None) -> dict:
        self.channel.events.append(("wait", self.path))
        if self.hang:
            raise concurrent.futures.TimeoutError
        return super().result(timeout)


class FakeChannel:
    """Writes chunks as the executor does, into a store of ``capacity`` bytes; ``hang_on`` never answers."""

    def __init__(self, capacity: int = 1 << 40, hang_on: str | None = None):
        self.capacity, self.hang_on = capacity, hang_on
        self.files: dict[str, bytearray] = {}
        self.written: set[str] = set()  # what write_files reports written
        self.events: list[tuple[str, str]] = []
        self.forgotten: list[int] = []
        self._ids = itertools.count(1)

    def submit(self, request: dict, payload: bytes = b"") -> tuple[int, concurrent.futures.Future]:
        path = request["path"]
        self.events.append(("send", path))
        reply = _Reply(self, path, hang=path == self.hang_on)
        used = sum(map(len, self.files.values())) - len(self.files.get(path, b"")) * (request["offset"] == 0)
        if used + len(payload) > self.capacity:
            reply.set_result({"error": {"kind": "os", "message": "[Errno 28] No space left on device"}})
        else:
            data = self.files.setdefault(path, bytearray())
            if request["offset"] == 0:
                data.clear()
            data[request["offset"] :] = payload
            reply.set_result({})
        return next(self._ids), reply

    def forget(self, rid: int) -> None:
        self.forgotten.append(rid)


def _write(channel: FakeChannel, files: dict[str, bytes]) -> set[str]:
    fake: Any = channel  # the two methods write_files uses, as a _Channel has them
    transfer.write_files(fake, list(files.items()), 1 << 30, channel.written, 5.0)
    return channel.written


def test_the_chunks_of_many_files_share_one_window():
    files = {f"f{i}.txt": b"x" * 10 for i in range(20)}
    channel = FakeChannel()
    assert _write(channel, files) == set(files)
    # One round trip per file would alternate send, wait; here a window's worth is sent before any wait.
    assert channel.events[: transfer.WINDOW] == [("send", f"f{i}.txt") for i in range(transfer.WINDOW)]
    assert channel.events.count(("wait", "f0.txt")) == 1 and len(channel.events) == 40
    assert {p: bytes(d) for p, d in channel.files.items()} == files


def test_big_and_empty_files_arrive_whole():
    files = {"big.bin": bytes(range(256)) * (CHUNK // 64 + 3), "empty": b"", "small": b"s"}
    channel = FakeChannel()
    assert _write(channel, files) == set(files)
    assert {p: bytes(d) for p, d in channel.files.items()} == files


def test_a_full_disk_names_what_was_and_was_not_written():
    # Six chunks a file, room for twenty: part3 fails on its third chunk, part4 with it.
    files = {f"part{i}.bin": bytes([i]) * (6 * CHUNK) for i in range(5)}
    channel = FakeChannel(capacity=20 * CHUNK)
    with pytest.raises(SandboxError, match="No space left"):
        _write(channel, files)
    assert channel.written == {"part0.bin", "part1.bin", "part2.bin"}
    # Nothing is sent once the failure is seen; what was in flight still answered (none left to forget).
    failed = [i for i, event in enumerate(channel.events) if event == ("wait", "part3.bin")][2]
    assert all(kind == "wait" for kind, _ in channel.events[failed:]) and channel.forgotten == []
    assert [kind for kind, _ in channel.events].count("send") == 20 + transfer.WINDOW < 30


def test_a_later_small_file_already_in_flight_is_reported_written():
    files = {"big.bin": b"b" * (2 * CHUNK), "small.txt": b"s"}
    channel = FakeChannel(capacity=CHUNK + 1)  # big's second chunk does not fit; small does, after it
    with pytest.raises(SandboxError, match="No space left"):
        _write(channel, files)
    assert channel.written == {"small.txt"} and bytes(channel.files["small.txt"]) == b"s"


def test_a_hung_executor_stops_the_transfer_at_once():
    files = {f"f{i}.txt": b"x" for i in range(12)}
    channel = FakeChannel(hang_on="f2.txt")
    with pytest.raises(transfer.ExecutorHung):
        _write(channel, files)
    assert channel.written == {"f0.txt", "f1.txt"}
    waits = [path for kind, path in channel.events if kind == "wait"]
    assert waits == ["f0.txt", "f1.txt", "f2.txt"]  # no wait after the hang: nothing more would answer
    assert len(channel.forgotten) == transfer.WINDOW  # the hung request and the others in flight, dropped
