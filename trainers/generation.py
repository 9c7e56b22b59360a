"""How ``EnvRollout`` generates inside a TRL trainer: the trainer's own model, or TRL's vLLM engine.

With ``use_vllm`` TRL builds ``trainer.vllm_generation`` (``vllm_mode: server`` talks to ``trl vllm-serve`` on
other GPUs; ``colocate`` runs vLLM beside the trainer) and we generate through it exactly as TRL's own
``_generate_single_turn`` does: push the weights once per optimizer step, then sample from token ids.

Generation can be a collective across training processes (vLLM server mode gathers every rank's prompts;
ZeRO-3/FSDP gather weights), so every rank must call it the same number of times. Episodes end after different
numbers of turns on different ranks; ``ranks_live`` lets a rank whose episodes are done keep stepping in
lockstep with a one-token placeholder prompt until no rank has a live episode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aligngym.agents.base import AgentResponse

Generate = Callable[[list[list[int]]], list[AgentResponse]]


def vllm_generate(trainer: Any) -> Generate:
    """A ``Generate`` over ``trainer.vllm_generation`` (TRL's vLLM client or colocated engine)."""
    tokenizer = trainer.processing_class

    def generate(contexts: list[list[int]]) -> list[AgentResponse]:
        step = trainer.state.global_step
        if getattr(trainer, "_last_loaded_step", None) != step:
            trainer.vllm_generation.sync_weights()
            trainer._last_loaded_step = step  # the attribute TRL's own generation checks, so neither re-syncs
        _, completion_ids, logprobs, _ = trainer.vllm_generation.generate(
            prompts=contexts, images=None, num_generations=1
        )
        eos = tokenizer.eos_token_id
        return [
            AgentResponse(
                text=tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=list(ids),
                logprobs=[float(lp[0]) for lp in lps],  # vLLM gives top-k per token; the sampled one is first
                finish_reason="stop" if ids and ids[-1] == eos else "length",
            )
            for ids, lps in zip(completion_ids, logprobs, strict=True)
        ]

    return generate


def ranks_live(trainer: Any) -> Callable[[bool], bool]:
    """``live_here -> live anywhere``: an any-reduce over the training processes (identity for one)."""
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        return lambda live_here: live_here

    def any_rank(live_here: bool) -> bool:
        import torch

        flag = torch.tensor([int(live_here)], device=accelerator.device)
        return bool(accelerator.gather(flag).sum().item())

    return any_rank
