"""Local transformers policies: batched sampling that keeps the generated token ids and their logprobs."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import AgentResponse, Message
from .tiny import load_model_and_tokenizer


@dataclass
class SamplingConfig:
    """Sampling parameters shared by the local agent and the trainers' rollouts."""

    max_new_tokens: int = field(default=64, metadata={"help": "Most tokens generated per assistant turn."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 means greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables it."})


def chat_prompt_ids(tokenizer, messages: list[Message], **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template, ending with the assistant prompt."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt_ids(
    tokenizer, messages: list[Message], limit: int | None, **template_kwargs: Any
) -> list[int]:
    """Prompt ids of ``messages`` in at most ``limit`` tokens: the oldest turns go first, the task stays.

    The leading system messages and the first user message (the task) are kept; turns after them are dropped
    oldest first; a prompt still too long keeps its last ``limit`` tokens.
    """
    ids = chat_prompt_ids(tokenizer, messages, **template_kwargs)
    if limit is None or len(ids) <= limit:
        return ids
    head = next((i + 1 for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
    lo, hi = 1, len(messages) - head  # turns to drop: the fewest that fit, by bisection (renders are costly)
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = chat_prompt_ids(tokenizer, messages[:head] + messages[head + mid :], **template_kwargs)
        if len(candidate) <= limit:
            best, hi = candidate, mid - 1
        else:
            lo = mid + 1
    if best is None:
        best = chat_prompt_ids(tokenizer, messages[:head], **template_kwargs)
    return best if len(best) <= limit else best[-limit:]


def context_window(model: Any, tokenizer: Any) -> int | None:
    """The most tokens the model attends over (its position embeddings), when it says."""
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(window, int):
        window = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30): no limit known.
    return window if isinstance(window, int) and 0 < window < 10**7 else None


@torch.no_grad()
def generate_batch(
    model, tokenizer, prompt_ids: list[list[int]], sampling: SamplingConfig
) -> list[AgentResponse]:
    """Sample one continuation per prompt: text plus the exact prompt ids, generated ids and their logprobs."""
    if not prompt_ids:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id
    # Left padding so every row's continuation starts at the same column.
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    greedy = sampling.temperature <= 0
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None if greedy or sampling.top_k <= 0 else sampling.top_k,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True,
        output_scores=True,
    )
    new_tokens = out.sequences[:, width:]
    # Scores are the processed logits the sampler drew from, so these are the sampling logprobs.
    logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    responses = []
    eos = tokenizer.eos_token_id
    for prompt, row, lps in zip(prompt_ids, new_tokens.tolist(), logprobs.tolist(), strict=True):
        n = len(row)
        finish = "length"
        if eos in row:
            n = row.index(eos) + 1
            finish = "stop"
        ids = row[:n]
        responses.append(
            AgentResponse(
                text=tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                logprobs=[float(x) for x in lps[:n]],
                finish_reason=finish,
                usage={"prompt_tokens": len(prompt), "completion_tokens": n},
                prompt_ids=list(prompt),
            )
        )
    return responses


class TransformersAgent:
    """A policy run locally with transformers; concurrent ``act`` calls are batched into one ``generate``.

    Prompts are kept within the model's context window (less the tokens to generate), oldest turns dropped
    first, so a long episode neither fails nor grows memory without bound.
    """

    def __init__(
        self,
        model: str | Any = "tiny",
        tokenizer: Any = None,
        sampling: SamplingConfig | None = None,
        device: str | None = None,
        max_batch_size: int = 32,
        name: str | None = None,
    ):
        if isinstance(model, str):
            self.name = name or model
            self.model, self.tokenizer = load_model_and_tokenizer(model, device=device)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with a model object")
            self.name = name or type(model).__name__
            self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        self.sampling = sampling or SamplingConfig()
        self.max_batch_size = max_batch_size
        window = context_window(self.model, self.tokenizer)
        self.max_prompt_tokens = max(1, window - self.sampling.max_new_tokens) if window else None
        self._pending: list[tuple[list[int], asyncio.Future]] = []
        self._lock = threading.Lock()
        self._worker: asyncio.Task | None = None

    async def act(self, messages: list[Message], tools: list[dict] | None = None) -> AgentResponse:
        """Queue this chat for the next batched ``generate`` and wait for its turn."""
        # Tools reach the model through its chat template (text tool calls, e.g. Hermes <tool_call> tags).
        template = {"tools": tools} if tools else {}
        ids = fit_prompt_ids(self.tokenizer, messages, self.max_prompt_tokens, **template)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((ids, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # Let every coroutine that is ready this tick enqueue first, so they share one generate call.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
            try:
                results = await asyncio.to_thread(self._generate, [ids for ids, _ in batch])
            except Exception as exc:  # a failed batch fails its episodes, not the whole rollout
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def _generate(self, prompt_ids: list[list[int]]) -> list[AgentResponse]:
        with self._lock:
            return generate_batch(self.model, self.tokenizer, prompt_ids, self.sampling)

    async def aclose(self) -> None:
        """Wait for the batch in flight; the model itself is freed by the garbage collector."""
        worker, self._worker = self._worker, None
        # A worker from another (finished) event loop cannot be awaited here and has nothing left to do.
        if worker is not None and not worker.done() and worker.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(worker, return_exceptions=True)
