"""A learned reward model as feedback: any transformers sequence-classification model with one output.

The chat and the response are rendered with the tokenizer's chat template (a plain ``role: content`` layout
when it has none) and the model's single logit is the score. Concurrent ``ascore`` calls on one event loop are
gathered into micro-batches of up to ``batch_size`` for one forward pass in a worker thread, so many
environments sharing one reward model (see :meth:`RewardModel.shared`) do not serialise on it.

``"tiny"`` is a random-initialised ``LlamaForSequenceClassification`` (``num_labels=1``) on the tiny policy's
character tokenizer, built locally and saved like ``aligngym.agents.tiny.tiny_model_path`` (no download).
Its scores are deterministic but meaningless until trained; it exists so every code path runs on a CPU.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .base import FeedbackResult, Message

TINY_NAME = "tiny"


def tiny_reward_model_path(config: Any = None) -> Path:
    """Folder holding the tiny reward model in ``save_pretrained`` form, built on first use (no download)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from aligngym.agents.tiny import (
        CHAT_TEMPLATE,
        SPECIAL_TOKENS,
        TinyConfig,
        build_tiny_model,
        build_tiny_tokenizer,
        cached_build,
    )

    config = config or TinyConfig()

    def build(folder: Path) -> None:
        tokenizer = build_tiny_tokenizer()
        # Same architecture as the tiny policy (one place defines it), with a one-logit score head.
        llama = build_tiny_model(config, tokenizer).config
        llama.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = LlamaForSequenceClassification(llama)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_build("tiny-rm", [asdict(config), CHAT_TEMPLATE, SPECIAL_TOKENS], build)


@dataclass
class _LoopQueue:
    """Texts waiting for the next forward pass on one event loop, and the task draining them."""

    pending: list[tuple[str, asyncio.Future]] = field(default_factory=list)
    worker: asyncio.Task | None = None


class RewardModel:
    """Score responses with a sequence-classification reward model; the raw logit is the score."""

    _shared: ClassVar[dict[tuple[str, int], RewardModel]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model: str | Path = TINY_NAME,
        batch_size: int = 16,
        name: str = "reward_model",
        max_length: int | None = None,
        device: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.name = name
        self.model, self.tokenizer = self._load(self.model_name, device)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_length = max_length or min(int(self.tokenizer.model_max_length), int(limit))
        self.device = device or "cpu"
        self.forward_calls = 0  # how many forward passes ran (tests and benchmarks check the batching)
        self._lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def shared(cls, model: str | Path = TINY_NAME, batch_size: int = 16) -> RewardModel:
        """One instance per (model, batch_size) in this process, so environments share weights and batches."""
        key = (str(model), batch_size)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(model, batch_size=batch_size)
            return cls._shared[key]

    @staticmethod
    def _load(model: str, device: str | None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = str(tiny_reward_model_path()) if model == TINY_NAME else model
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            loaded = AutoModelForSequenceClassification.from_pretrained(path, dtype="auto")
        except (
            Exception
        ) as exc:  # transformers raises OSError, ValueError, HFValidationError, ... for bad paths
            raise ValueError(f"cannot load reward model {model!r}: {exc}") from exc
        if loaded.config.num_labels != 1:
            raise ValueError(
                f"reward model {model!r} has {loaded.config.num_labels} outputs; a reward model needs num_labels=1"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if loaded.config.pad_token_id is None:
            loaded.config.pad_token_id = tokenizer.pad_token_id
        # Right padding keeps each row's positions independent of the batch, so a score does not depend on
        # its batch-mates; left truncation keeps the response when a chat is too long.
        tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
        if device:
            loaded.to(device)
        return loaded.eval(), tokenizer

    def render(self, messages: Sequence[Message], response: str) -> str:
        """The chat plus the response as the model reads it."""
        chat = [*({"role": m["role"], "content": m.get("content") or ""} for m in messages)]
        chat.append({"role": "assistant", "content": response})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in chat)

    def _forward(self, texts: list[str]) -> list[float]:
        import torch

        with self._lock, torch.inference_mode():
            batch = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
                return_tensors="pt",
            ).to(self.model.device)
            self.forward_calls += 1
            logits = self.model(**batch).logits
        return [float(x) for x in logits[:, 0].float().cpu()]

    def score_batch(self, pairs: Sequence[tuple[Sequence[Message], str]]) -> list[float]:
        """Raw scores of ``(messages, response)`` pairs, ``batch_size`` per forward pass (blocking)."""
        texts = [self.render(messages, response) for messages, response in pairs]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores.extend(self._forward(texts[start : start + self.batch_size]))
        return scores

    async def ascore_batch(self, pairs: Sequence[tuple[Sequence[Message], str]]) -> list[float]:
        """Async ``score_batch``: the pairs join the shared micro-batch queue."""
        return list(await asyncio.gather(*(self._submit(self.render(m, r)) for m, r in pairs)))

    async def ascore(self, messages: list[Message], response: str, **context: Any) -> FeedbackResult:
        """The reward model's raw logit for ``response``; component ``raw``."""
        raw = await self._submit(self.render(messages, response))
        return FeedbackResult(raw, {"raw": raw})

    async def _submit(self, text: str) -> float:
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _LoopQueue())
        future: asyncio.Future = loop.create_future()
        queue.pending.append((text, future))
        if queue.worker is None or queue.worker.done():
            queue.worker = loop.create_task(self._drain(queue))
        return await future

    async def _drain(self, queue: _LoopQueue) -> None:
        # Let every coroutine that is ready this tick enqueue first, so they share one forward pass.
        await asyncio.sleep(0)
        while queue.pending:
            batch, queue.pending = queue.pending[: self.batch_size], queue.pending[self.batch_size :]
            try:
                scores = await asyncio.to_thread(self._forward, [text for text, _ in batch])
            except Exception as exc:  # a failed batch fails its callers, not the queue
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), value in zip(batch, scores, strict=True):
                if not future.done():
                    future.set_result(value)
