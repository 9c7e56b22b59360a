"""Environment-driven generation for TRL: episodes played by the policy being trained.

TRL's ``rollout_func`` hook hands us the prompts of a batch; we play one episode per prompt in the
environment it came from, keeping the exact generated token ids (never re-tokenised text) and marking the
tokens the environment wrote with ``env_mask = 0`` so they are not trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aligngym.agents.local import SamplingConfig, chat_prompt_ids, generate_batch
from aligngym.envs.registry import make


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """A stable key for a conversational prompt (TRL deep-copies prompts, so identity cannot be used)."""
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def env_suffix_ids(
    tokenizer, history: list[dict], generated_ids: list[int], new_messages: list[dict]
) -> list[int]:
    """Token ids the chat template puts between the policy's generated turn and its next turn.

    ``history`` ends with the message the policy answered and ``new_messages`` starts with that answer. The
    suffix is computed on rendered text, so any chat template works, and only the suffix is tokenised: the
    generated ids themselves are kept exactly as sampled.
    """
    prompt_text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(history + new_messages, tokenize=False, add_generation_prompt=True)
    # With its end-of-turn token the turn is a prefix as generated; cut by length, the template's
    # end-of-turn token is missing and becomes part of the environment's text.
    for skip_special in (False, True):
        prefix = prompt_text + tokenizer.decode(generated_ids, skip_special_tokens=skip_special)
        if full.startswith(prefix):
            return tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
    raise ValueError(
        "the chat template does not render the generated turn verbatim, so environment tokens cannot be "
        "aligned with the generated ids; use a template that keeps assistant content unchanged"
    )


@dataclass
class Episode:
    """One episode in flight inside a training batch."""

    env: Any
    messages: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    done: bool = False


class EnvRollout:
    """A TRL ``rollout_func``: plays each prompt's episode in the environment with the trainer's model."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        seeds_by_prompt: dict[str, int],
        sampling: SamplingConfig,
    ):
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.seeds_by_prompt = seeds_by_prompt
        self.sampling = sampling
        self._pool: list[Any] = []
        self.component_names: list[str] = []

    def _envs(self, n: int) -> list[Any]:
        while len(self._pool) < n:
            self._pool.append(make(self.env_id, **self.env_kwargs).unwrapped)
        return self._pool[:n]

    def play(self, model, tokenizer, prompts: list[list[dict]]) -> list[Episode]:
        """Play one episode per prompt, batching the policy's turns across episodes."""
        episodes = []
        for env, prompt in zip(self._envs(len(prompts)), prompts, strict=True):
            seed = self.seeds_by_prompt.get(prompt_key(prompt))
            if seed is None:
                raise KeyError("a training prompt does not come from this environment's dataset")
            _, info = env.reset(seed=seed)
            messages = info["messages"]
            episodes.append(Episode(env, messages, chat_prompt_ids(tokenizer, messages)))
        while active := [ep for ep in episodes if not ep.done]:
            contexts = [ep.prompt_ids + ep.completion_ids for ep in active]
            for ep, resp in zip(
                active, generate_batch(model, tokenizer, contexts, self.sampling), strict=True
            ):
                ep.completion_ids += resp.token_ids
                ep.env_mask += [1] * len(resp.token_ids)
                ep.logprobs += resp.logprobs
                history = list(ep.messages)
                _, reward, terminated, truncated, info = ep.env.step(resp.text)
                ep.reward += reward
                ep.components = info["reward_components"]
                ep.messages = info["messages"]
                ep.done = terminated or truncated
                if not ep.done:
                    suffix = env_suffix_ids(tokenizer, history, resp.token_ids, ep.messages[len(history) :])
                    ep.completion_ids += suffix
                    ep.env_mask += [0] * len(suffix)
                    ep.logprobs += [0.0] * len(suffix)
        return episodes

    def __call__(self, prompts: list[list[dict]], trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            episodes = self.play(model, trainer.processing_class, prompts)
        finally:
            model.train(was_training)
        out: dict[str, list] = {
            "prompt_ids": [ep.prompt_ids for ep in episodes],
            "completion_ids": [ep.completion_ids for ep in episodes],
            "logprobs": [ep.logprobs for ep in episodes],
            "env_mask": [ep.env_mask for ep in episodes],
            "env_reward": [ep.reward for ep in episodes],
        }
        for name in self.component_names:
            out[f"component_{name}"] = [float(ep.components.get(name, float("nan"))) for ep in episodes]
        return out
