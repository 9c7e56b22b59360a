"""Per-request sampling seeds: the episode engine says which seed each request samples with, agents read it.

The engine (``aligngym.run_episode``) sets ``request_seed()`` around every ``act`` call of an episode played
with a sampling seed: one seed per (episode, seat, turn), derived from the run's ``--sampling-seed`` with
``derive_seed``. A backend that can sample from a given seed passes it on: an OpenAI-protocol server takes it
as the request's ``seed`` (vLLM honours it per request). A context variable carries it, so the ``Agent``
protocol stays ``act(messages, tools)`` and concurrent episodes never see each other's seeds.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar

_REQUEST_SEED: ContextVar[int | None] = ContextVar("aligngym_request_seed", default=None)


def request_seed() -> int | None:
    """The seed the current request should sample with; ``None`` when the run samples unseeded."""
    return _REQUEST_SEED.get()


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Within the block (and the tasks it starts), ``request_seed()`` is ``seed``."""
    token = _REQUEST_SEED.set(seed)
    try:
        yield
    finally:
        _REQUEST_SEED.reset(token)


def derive_seed(seed: int, *parts: object) -> int:
    """A seed in [0, 2**31) fixed by ``seed`` and ``parts``, the same in every process and Python version."""
    text = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % 2**31
