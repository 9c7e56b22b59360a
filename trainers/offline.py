"""Learning from stored trajectories: DPO on preference pairs, SFT on the best trajectories (rejection sampling)."""

from __future__ import annotations

import logging
from typing import Any

from .config import ConfigError, TrainConfig
from .pairs import PairConfig, build_pairs, build_sft
from .trl_setup import build_trainer, common_args, fit, peft_config, run_trainer

logger = logging.getLogger(__name__)


def _pair_config(config: TrainConfig) -> PairConfig:
    return PairConfig(
        min_margin=config.min_margin,
        max_pairs_per_prompt=config.max_pairs_per_prompt,
        reward_threshold=config.reward_threshold,
        top_k=config.top_k,
    )


def _rows(config: TrainConfig) -> list[dict[str, Any]]:
    from aligngym.trajectory import read_trajectories

    return read_trajectories(config.data)


def _pair_dataset(config: TrainConfig, pairs: list[dict[str, Any]]):
    """The conversational columns of ``pairs`` as a dataset; no pairs is a ``ConfigError``."""
    from datasets import Dataset

    if not pairs:
        raise ConfigError(
            f"data: no preference pairs in {config.data} (need >= 2 successful trajectories of the same prompt "
            f"whose rewards differ by >= min_margin={config.min_margin})"
        )
    return Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])


def dpo_trainer(config: TrainConfig, model, tokenizer, pairs: list[dict[str, Any]]):
    """A DPO trainer on ``pairs`` whose loss covers the policy's (assistant) tokens only; not trained yet."""
    from trl import DPOConfig

    from .turn_masks import AssistantOnlyDPOTrainer, assistant_mask_collator

    args = DPOConfig(beta=config.beta or 0.1, **common_args(config))
    return build_trainer(
        AssistantOnlyDPOTrainer,
        args,
        config,
        model,
        tokenizer,
        _pair_dataset(config, pairs),
        data_collator=assistant_mask_collator(tokenizer, args),
        peft_config=peft_config(config),
    )


def train_dpo(config: TrainConfig, model, tokenizer):
    """DPO on pairs built from ``config.data`` (chosen = higher reward of the same prompt)."""
    pairs = build_pairs(_rows(config), _pair_config(config))
    return fit(dpo_trainer(config, model, tokenizer, pairs), config)


def train_sft(config: TrainConfig, model, tokenizer):
    """TRL ``SFTTrainer`` on the kept trajectories, loss on assistant turns only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    kept = build_sft(_rows(config), _pair_config(config))
    if not kept:
        raise ConfigError(f"data: no trajectory in {config.data} passes reward_threshold/top_k")
    dataset = Dataset.from_list([{"messages": k["messages"]} for k in kept])
    # Environment turns are context, not targets: only the policy's own turns are trained on.
    args = SFTConfig(assistant_only_loss=True, **common_args(config))
    return run_trainer(SFTTrainer, args, config, model, tokenizer, dataset, peft_config=peft_config(config))


def completion_logprob(model, tokenizer, prompt: list[dict], completion: list[dict]) -> float:
    """Sum of the model's log-probabilities of the assistant tokens of ``completion`` after ``prompt``.

    The same tokens DPO trains on (``turn_masks``): environment turns inside ``completion`` are context only.
    """
    import torch

    from .turn_masks import encode_conversation, training_chat_template

    _, full_ids, mask = encode_conversation(tokenizer, prompt, completion, training_chat_template(tokenizer))
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float((logps * torch.tensor(mask[1:], device=logps.device)).sum())


def implicit_margin(policy, reference, tokenizer, pair: dict[str, Any], beta: float = 0.1) -> float:
    """DPO's implicit reward margin of one pair: beta * (log-ratio of chosen - log-ratio of rejected)."""

    def ratio(messages: list[dict]) -> float:
        return completion_logprob(policy, tokenizer, pair["prompt"], messages) - completion_logprob(
            reference, tokenizer, pair["prompt"], messages
        )

    return beta * (ratio(pair["chosen"]) - ratio(pair["rejected"]))


def load_reward_model(name_or_path: str):
    """A sequence-classification model with one output (a scalar reward) and its tokenizer.

    ``tiny`` starts from the tiny policy's weights with a fresh scoring head, so no download is needed.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aligngym.agents.tiny import TINY_NAME, tiny_model_path

    path = str(tiny_model_path()) if name_or_path == TINY_NAME else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _quiet_classifier(AutoModelForSequenceClassification, path)
    except OSError as exc:
        raise ConfigError(f"model: cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sequence classifiers find the last real token through pad_token_id; without it batches fail.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _quiet_classifier(model_cls, path: str):
    """The one-output classifier at ``path``; transformers' load report only when more than the head is new.

    The scoring head is new by design, so the report transformers prints for it is noise; any other
    missing weight is a real problem and is logged.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = model_cls.from_pretrained(path, num_labels=1, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("score."))
    if missing or info["mismatched_keys"]:
        logger.warning(
            "reward model %s: newly initialised weights besides the score head: %s",
            path,
            ", ".join(missing + sorted(map(str, info["mismatched_keys"]))),
        )
    return model


def train_reward(config: TrainConfig):
    """TRL ``RewardTrainer`` on pairs from ``config.data``: the env's preferences become a reward model.

    Unlike DPO nothing is masked: the reward model scores the whole conversation with one scalar (its last
    token), so the environment's turns are part of what it judges, as they are when the env rewards it.
    """
    from trl import RewardConfig, RewardTrainer

    dataset = _pair_dataset(config, build_pairs(_rows(config), _pair_config(config)))
    model, tokenizer = load_reward_model(config.model)
    return run_trainer(RewardTrainer, RewardConfig(**common_args(config)), config, model, tokenizer, dataset)


def pair_accuracy(model, tokenizer, pairs: list[dict[str, Any]]) -> float:
    """Fraction of pairs whose chosen conversation the reward model scores above the rejected one."""
    import torch

    def score(messages: list[dict]) -> float:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(
            next(model.parameters()).device
        )
        with torch.no_grad():
            return float(model(**ids).logits[0, 0])

    wins = [score(p["prompt"] + p["chosen"]) > score(p["prompt"] + p["rejected"]) for p in pairs]
    return sum(wins) / len(wins) if wins else 0.0
