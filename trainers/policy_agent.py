"""The policy being trained, as an agent: episodes ask it for turns, and it generates them in batches.

Every episode of a training batch runs through ``run_episode`` at once, each with its own ``PolicySeat``;
a seat's ``act`` queues its context and waits. When every open seat is waiting, ``TrainerPolicy.serve``
generates all of them in one batch (the trainer's model or TRL's vLLM engine), in lockstep with the other
training processes. Env steps of different episodes overlap meanwhile (sandboxes, judges).

Token ids are never re-tokenised: a seat's next context is its last context, the ids it generated, and only
the environment's new messages tokenised (``env_suffix_ids``); each reply carries the exact ``prompt_ids``
it was sampled from, so the trajectory stores what was sampled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aligngym.agents.base import AgentResponse, Message
from aligngym.agents.local import chat_prompt_ids

from .generation import Generate
from .tokens import env_suffix_ids

#: Seconds without any seat moving after which a round serves the seats that wait (see ``serve``).
PATIENCE_S = 1.0


class TrainerPolicy:
    """Batches the turns of many episodes into one generation call per round (see the module docstring)."""

    def __init__(
        self, tokenizer: Any, generate: Generate, live_anywhere: Callable[[bool], bool] | None = None
    ):
        self.tokenizer = tokenizer
        self._generate = generate
        self._live_anywhere = live_anywhere or (lambda live_here: live_here)
        self._open: set[PolicySeat] = set()
        self._waiting: dict[PolicySeat, tuple[list[int], asyncio.Future]] = {}
        self._changed: asyncio.Event | None = None
        self._broken: BaseException | None = None
        self._inflight: list[tuple[list[int], asyncio.Future]] = []  # the round being generated
        self.rounds = 0

    def seat(self) -> PolicySeat:
        """A new seat for one episode (one per seat of a multi-agent episode); ``end`` it when the episode ends."""
        seat = PolicySeat(self)
        self._open.add(seat)
        return seat

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def _ask(self, seat: PolicySeat, context: list[int]) -> AgentResponse:
        if self._broken is not None:
            raise RuntimeError(f"generation failed earlier in this batch: {self._broken}")
        future = asyncio.get_running_loop().create_future()
        self._waiting[seat] = (context, future)
        self._event().set()
        return await future

    def _end(self, seat: PolicySeat) -> None:
        self._open.discard(seat)
        self._waiting.pop(seat, None)
        self._event().set()

    async def serve(self) -> None:
        """Generate rounds until no seat here or on any other rank is open (run beside the episodes).

        A round starts when every open seat waits, or when some wait and nothing has moved for
        ``PATIENCE_S``: a seat whose episode waits for a sandbox that waiting seats hold would otherwise
        wait forever. If a round fails (generation, or the collective with other ranks), every waiting
        episode fails with the error and so does every later turn.
        """
        try:
            await self._serve()
        except BaseException as exc:
            self._broken = exc
            for _, future in [*self._waiting.values(), *self._inflight]:
                if not future.done():
                    future.set_exception(exc)
            self._waiting.clear()
            raise

    async def _serve(self) -> None:
        changed = self._event()
        while True:
            while len(self._waiting) < len(self._open):  # a seat is still in its env step: wait for it
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), PATIENCE_S)
                except TimeoutError:
                    if self._waiting:
                        break  # stuck (see above): serve those who wait
            batch = list(self._waiting.items())
            self._waiting.clear()
            self._inflight = [entry for _, entry in batch]
            if not self._live_anywhere(bool(batch)):
                return
            self.rounds += 1
            # Generation runs on this thread, as TRL's own does: every open seat waits for it anyway, and a
            # worker thread per batch costs more than it saves.
            if not batch:  # this rank is done but another generates: keep the collective call count equal
                self._generate([[self.tokenizer.eos_token_id]])
                continue
            replies = self._generate([context for _, (context, _) in batch])
            if len(replies) != len(batch):
                raise RuntimeError(f"generation returned {len(replies)} replies for {len(batch)} contexts")
            for (_, (context, future)), reply in zip(batch, replies, strict=True):
                if not future.done():  # its episode may have been cancelled meanwhile
                    reply.prompt_ids = list(context)
                    future.set_result(reply)


class PolicySeat:
    """One episode's seat played by the trained policy: keeps the exact token context between its turns."""

    name = "policy"

    def __init__(self, policy: TrainerPolicy):
        self._policy = policy
        self._history: list[Message] | None = None
        self._context: list[int] = []
        self._last: list[int] = []

    async def act(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> AgentResponse:
        """The next turn for ``messages``: its context is the last one plus only the env's new tokens."""
        tokenizer = self._policy.tokenizer
        extra = {"tools": tools} if tools else {}
        if self._history is None:
            context = chat_prompt_ids(tokenizer, messages, **extra)
        else:
            new = messages[len(self._history) :]
            suffix = env_suffix_ids(tokenizer, self._history, self._last, new, **extra)
            context = self._context + self._last + suffix
        reply = await self._policy._ask(self, context)
        self._history, self._context, self._last = list(messages), context, list(reply.token_ids or [])
        return reply

    def end(self) -> None:
        """The episode is over: generation rounds stop waiting for this seat."""
        self._policy._end(self)

    async def aclose(self) -> None:
        self.end()
