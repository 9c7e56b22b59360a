"""Environment-driven generation for TRL: episodes played by the policy being trained.

TRL's ``rollout_func`` hook hands us the prompts of a batch; we play one episode per prompt in the
environment it came from, keeping the exact generated token ids (never re-tokenised text) and marking the
tokens the environment wrote with ``env_mask = 0`` so they are not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aligngym.agents.local import SamplingConfig, chat_prompt_ids, generate_batch
from aligngym.envs.registry import make

from .generation import Generate, ranks_live, vllm_generate


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
class Slot:
    """One policy seat in one episode in flight: the tokens it generated and what the env wrote to it."""

    job: Job
    seat: str | None
    messages: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    done: bool = False


@dataclass
class Job:
    """One environment episode; single-agent envs have one slot, multi-agent envs one per seat."""

    env: Any
    slots: dict[str | None, Slot] = field(default_factory=dict)


class EnvRollout:
    """A TRL ``rollout_func``: plays each prompt's episode in the environment with the trainer's model.

    Multi-agent environments are self-play: every seat is played by the policy. A prompt stands for one
    (seed, seat); prompts of the same seed but different seats share an episode, so each episode trains every
    seat that the batch asks for.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        tasks_by_prompt: dict[str, tuple[int, str | None]],
        sampling: SamplingConfig,
    ):
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.tasks_by_prompt = tasks_by_prompt
        self.sampling = sampling
        self._pool: list[Any] = []
        self.component_names: list[str] = []

    def _jobs(self, prompts: list[list[dict]]) -> tuple[list[tuple[Job, str | None]], dict[int, int]]:
        """Assign each prompt to an episode: (job, seat) per prompt in prompt order, and each job's seed."""
        jobs: list[tuple[int, Job]] = []
        placed = []
        for prompt in prompts:
            task = self.tasks_by_prompt.get(prompt_key(prompt))
            if task is None:
                raise KeyError("a training prompt does not come from this environment's dataset")
            seed, seat = task
            job = next((j for s, j in jobs if s == seed and seat is not None and seat not in j.slots), None)
            if job is None:
                if len(self._pool) <= len(jobs):
                    self._pool.append(_unwrapped(make(self.env_id, **self.env_kwargs)))
                job = Job(self._pool[len(jobs)])
                jobs.append((seed, job))
            job.slots[seat] = None  # reserved; filled at reset
            placed.append((job, seat, seed))
        return [(job, seat) for job, seat, _ in placed], {id(j): s for s, j in jobs}

    def play(
        self,
        model,
        tokenizer,
        prompts: list[list[dict]],
        generate: Generate | None = None,
        live_anywhere: Callable[[bool], bool] | None = None,
    ) -> list[Slot]:
        """Play the episodes behind ``prompts``, batching the policy's turns across all live seats.

        ``generate`` defaults to sampling from ``model``; ``live_anywhere`` (see ``generation.ranks_live``)
        keeps several training processes generating in lockstep.
        """
        generate = generate or (lambda contexts: generate_batch(model, tokenizer, contexts, self.sampling))
        live_anywhere = live_anywhere or (lambda live_here: live_here)
        placed, seeds = self._jobs(prompts)
        jobs = list({id(job): job for job, _ in placed}.values())
        for job in jobs:
            wanted = list(job.slots)
            _, infos = job.env.reset(seed=seeds[id(job)])
            if wanted == [None]:
                infos = {None: infos}
            else:  # a self-play episode: every seat is played, the unasked ones are simply not returned
                wanted = list(job.env.possible_agents)
            job.slots = {
                seat: Slot(
                    job, seat, infos[seat]["messages"], chat_prompt_ids(tokenizer, infos[seat]["messages"])
                )
                for seat in wanted
            }
        while True:
            live = [slot for job in jobs for slot in job.slots.values() if not slot.done]
            if not live_anywhere(bool(live)):
                break
            if not live:  # this rank is done but others generate: keep the collective call count equal
                generate([[tokenizer.eos_token_id]])
                continue
            contexts = [slot.prompt_ids + slot.completion_ids for slot in live]
            responses = generate(contexts)
            by_job: dict[int, dict[str | None, Any]] = {}
            for slot, resp in zip(live, responses, strict=True):
                slot.completion_ids += resp.token_ids
                slot.env_mask += [1] * len(resp.token_ids)
                slot.logprobs += resp.logprobs
                by_job.setdefault(id(slot.job), {})[slot.seat] = resp
            for job in jobs:
                if id(job) in by_job:
                    self._step(job, by_job[id(job)], tokenizer)
        return [job.slots[seat] for job, seat in placed]

    def _step(self, job: Job, responses: dict[str | None, Any], tokenizer) -> None:
        history = {seat: list(job.slots[seat].messages) for seat in responses}
        if None in responses:
            _, reward, terminated, truncated, info = job.env.step(responses[None].text)
            rewards, dones, infos = {None: reward}, {None: terminated or truncated}, {None: info}
        else:
            _, rewards, terms, truncs, infos = job.env.step({s: r.text for s, r in responses.items()})
            dones = {s: terms[s] or truncs[s] for s in responses}
        for seat, resp in responses.items():
            slot = job.slots[seat]
            slot.reward += float(rewards[seat])
            slot.components = infos[seat]["reward_components"]
            slot.messages = infos[seat]["messages"]
            slot.done = bool(dones[seat])
            if not slot.done:
                new = slot.messages[len(history[seat]) :]
                suffix = env_suffix_ids(tokenizer, history[seat], resp.token_ids, new)
                slot.completion_ids += suffix
                slot.env_mask += [0] * len(suffix)
                slot.logprobs += [0.0] * len(suffix)

    def __call__(self, prompts: list[list[dict]], trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        generate = vllm_generate(trainer) if getattr(trainer, "use_vllm", False) else None
        try:
            slots = self.play(model, trainer.processing_class, prompts, generate, ranks_live(trainer))
        finally:
            model.train(was_training)
        out: dict[str, list] = {
            "prompt_ids": [s.prompt_ids for s in slots],
            "completion_ids": [s.completion_ids for s in slots],
            "logprobs": [s.logprobs for s in slots],
            "env_mask": [s.env_mask for s in slots],
            "env_reward": [s.reward for s in slots],
        }
        for name in self.component_names:
            out[f"component_{name}"] = [float(s.components.get(name, float("nan"))) for s in slots]
        return out


def _unwrapped(env: Any) -> Any:
    return getattr(env, "unwrapped", env)
