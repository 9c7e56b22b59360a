"""Token-faithful training samples: the ids a policy sampled, with the environment's tokens between its turns.

A trajectory row keeps, per assistant turn, the exact prompt ids the backend sampled from, the ids it sampled
and their logprobs (``Trajectory.tokens``). ``trajectory_sample`` turns them into one GRPO sample:

    prompt_ids     = turn 0's prompt ids
    completion_ids = turn 0's ids + env suffix 1 + turn 1's ids + env suffix 2 + ... + turn n's ids
    env_mask       = 1 on sampled ids, 0 on env suffixes;  logprobs = sampled logprobs, 0 on env suffixes

The env suffix k (the template's end of turn k-1, the environment's messages, the next assistant header) is
taken, in this order of preference:

1. from the server's own ids: turn k's prompt ids less the prefix ``prompt_ids[k-1] + completion_ids[k-1]``,
   when it is a prefix. Nothing is tokenised at all.
2. otherwise from the chat template: ``env_suffix_ids`` renders the messages as text and tokenises only the
   suffix, never the generated ids (this needs the tokenizer and the episode's messages).

Retokenisation drift is when turn k's prompt ids do not start with the sequence assembled so far: the server
sampled turn k from a context other than the one the trainer scores it in (a chat template that rewrites
history, e.g. reasoning models dropping ``<think>`` from earlier turns; BPE merges across a turn boundary; a
prompt cut to fit the context window). The sampled ids are still the ones trained on; the turns concerned are
listed in ``TokenSample.drift`` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aligngym.trajectory import Trajectory

logger = logging.getLogger(__name__)

# Where an assistant turn's content sits in a rendering: private-use characters that no template rewrites.
_MARK = "\ue000aligngym-turn\ue001"


@dataclass
class TokenSample:
    """One GRPO sample: ``env_mask`` is 1 on sampled ids and 0 on environment tokens (logprob 0 there)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    #: Sampling logprobs aligned with ``completion_ids``; ``None`` when a turn's were not returned.
    logprobs: list[float] | None
    #: Turns (0-based) whose server prompt is not the assembled context: retokenisation drift.
    drift: list[int] = field(default_factory=list)


def _render(tokenizer, messages: list[dict], **template_kwargs: Any) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def env_suffix_ids(
    tokenizer, history: list[dict], generated_ids: list[int], new_messages: list[dict], **template_kwargs: Any
) -> list[int]:
    """Token ids the chat template puts between the policy's generated turn and its next turn.

    ``history`` ends with the message the policy answered and ``new_messages`` starts with that answer. The
    suffix is computed on rendered text, so any chat template works, and only the suffix is tokenised: the
    generated ids themselves are kept exactly as sampled. When the answer is not rendered as generated (cut
    by length, special tokens its text drops, a template that rewrites it: drops ``<think>``, strips it), the
    suffix is the text the template writes after the answer's content.
    """
    prompt_text = _render(tokenizer, history, **template_kwargs)
    full = _render(tokenizer, history + new_messages, **template_kwargs)
    prefix = prompt_text + tokenizer.decode(generated_ids, skip_special_tokens=False)
    if full.startswith(prefix):  # the turn is rendered as generated, its end-of-turn token included
        return _ids(tokenizer, full[len(prefix) :])
    return _ids(
        tokenizer, _text_after_turn(tokenizer, history, generated_ids, new_messages, **template_kwargs)
    )


def _text_after_turn(
    tokenizer, history: list[dict], generated_ids: list[int], new_messages: list[dict], **template_kwargs: Any
) -> str:
    """The rendered text after the answer's content, less the end-of-turn token the policy generated.

    Cut by length, the turn has no end-of-turn token, so the template's becomes part of the environment's text.
    """
    marked = [*history, {**new_messages[0], "content": _MARK}, *new_messages[1:]]
    text = _render(tokenizer, marked, **template_kwargs)
    if text.count(_MARK) != 1:
        raise ValueError(
            "the chat template does not render the generated turn's content, so environment tokens cannot be "
            "aligned with the generated ids; use a template that keeps assistant content"
        )
    after = text.split(_MARK, 1)[1]
    special = set(tokenizer.all_special_ids)
    cut = len(generated_ids)
    while cut and generated_ids[cut - 1] in special:
        cut -= 1
    ended = tokenizer.decode(generated_ids[cut:], skip_special_tokens=False)
    return after[len(ended) :] if ended and after.startswith(ended) else after


def trajectory_sample(
    trajectory: Trajectory | dict[str, Any], tokenizer=None, **template_kwargs: Any
) -> TokenSample:
    """The GRPO sample of a stored trajectory (a ``Trajectory`` or its JSONL row) from its per-turn tokens.

    ``tokenizer`` (and the ``tools`` its template was given, in ``template_kwargs``) is needed only where the
    server's prompt ids do not give an environment suffix (see the module docstring).
    """
    if isinstance(trajectory, dict):
        trajectory = Trajectory.from_dict(trajectory)
    if not trajectory.tokens:
        raise ValueError(
            f"episode {trajectory.episode} has no token ids: its backend did not return them "
            "(an OpenAI-protocol agent needs return_tokens=True and a server that honours it, e.g. vLLM)"
        )
    return sample_from_turns(trajectory.tokens, trajectory.messages, tokenizer, **template_kwargs)


def sample_from_turns(
    turns: Sequence[dict[str, Any]],
    messages: list[dict] | None = None,
    tokenizer=None,
    **template_kwargs: Any,
) -> TokenSample:
    """Assemble per-turn tokens (``Trajectory.tokens`` entries) into one sample; see the module docstring."""
    turns = sorted(turns, key=lambda t: t["turn"])
    if [t["turn"] for t in turns] != list(range(len(turns))) or not turns:
        raise ValueError(f"turns {[t['turn'] for t in turns]} are not 0..n-1: a turn's tokens are missing")
    if turns[0]["prompt_ids"] is None:
        raise ValueError("turn 0 has no prompt ids: the backend did not return them")
    sample = TokenSample(list(turns[0]["prompt_ids"]), [], [], [])
    for k, turn in enumerate(turns):
        if k:
            seen = turn["prompt_ids"]
            assembled = sample.prompt_ids + sample.completion_ids
            if seen is not None and seen[: len(assembled)] != assembled:
                sample.drift.append(k)
            _extend(sample, _env_suffix(turns[k - 1], turn, messages, tokenizer, **template_kwargs))
        _extend(sample, turn["completion_ids"], sampled=True, logprobs=turn["logprobs"])
    if sample.drift:
        logger.warning(
            "retokenisation drift: the server sampled turn(s) %s from a context other than the assembled one "
            "(a chat template that rewrites history, or merges across a turn boundary)",
            ", ".join(map(str, sample.drift)),
        )
    return sample


def _extend(
    sample: TokenSample, ids: list[int], sampled: bool = False, logprobs: list[float] | None = None
) -> None:
    """Append sampled ids with their ``logprobs``, or environment ids (mask 0, logprob 0)."""
    sample.completion_ids += ids
    sample.env_mask += [int(sampled)] * len(ids)
    if sample.logprobs is None:
        return
    if not sampled:
        sample.logprobs += [0.0] * len(ids)
    elif logprobs is not None and len(logprobs) == len(ids):
        sample.logprobs += [float(x) for x in logprobs]
    else:
        sample.logprobs = None  # a turn's logprobs unknown or misaligned: unknown for the sample, not guessed


def _env_suffix(
    prev: dict[str, Any], turn: dict[str, Any], messages: list[dict] | None, tokenizer, **template_kwargs: Any
) -> list[int]:
    """Environment ids between ``prev`` and ``turn``: the server's own when they extend ``prev``, else rendered."""
    seen = turn["prompt_ids"]
    if prev["prompt_ids"] is not None and seen is not None:
        before = prev["prompt_ids"] + prev["completion_ids"]
        if seen[: len(before)] == before:
            return list(seen[len(before) :])
    k = turn["turn"]
    if tokenizer is None or not messages:
        raise ValueError(
            f"turn {k}'s prompt ids do not extend turn {k - 1}'s prompt and completion (a chat template that "
            "rewrites history?); rendering the environment's tokens between them needs the tokenizer and the "
            "episode's messages"
        )
    answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if len(answers) < k:
        raise ValueError(f"the episode's messages hold {len(answers)} assistant turns; turn {k} needs {k}")
    end = answers[k] if len(answers) > k else len(messages)
    return env_suffix_ids(
        tokenizer,
        messages[: answers[k - 1]],
        prev["completion_ids"],
        messages[answers[k - 1] : end],
        **template_kwargs,
    )
