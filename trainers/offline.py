"""Learning from stored trajectories: DPO on preference pairs, SFT on the best trajectories (rejection sampling)."""

from __future__ import annotations

import os
from typing import Any

from .config import ConfigError, TrainConfig
from .logging import MetricsCallback
from .pairs import PairConfig, build_pairs, build_sft


def _pair_config(config: TrainConfig) -> PairConfig:
    return PairConfig(
        min_margin=config.min_margin,
        max_pairs_per_prompt=config.max_pairs_per_prompt,
        reward_threshold=config.reward_threshold,
        top_k=config.top_k,
    )


def _common_args(config: TrainConfig) -> dict[str, Any]:
    import torch

    return {
        "output_dir": config.output_dir,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size,
        "logging_steps": config.logging_steps,
        "seed": config.seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "report_to": "none",
        **checkpointing(config),
        **config.trl,
    }


def checkpointing(config: TrainConfig) -> dict[str, Any]:
    """TrainingArguments for periodic checkpoints (what ``resume`` continues from)."""
    if config.save_steps > 0:
        return {"save_strategy": "steps", "save_steps": config.save_steps, "save_total_limit": 2}
    return {"save_strategy": "no"}


def peft_config(config: TrainConfig):
    """A peft ``LoraConfig`` when ``lora_r > 0``, else None (full fine-tuning)."""
    if config.lora_r <= 0:
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )


def run_trainer(trainer_cls, args, config: TrainConfig, model, tokenizer, dataset, **extra: Any):
    """Build a TRL trainer with our metrics callback, then train it (resuming when asked)."""
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[MetricsCallback(config.output_dir, append=config.resume)],
        **extra,
    )
    return fit(trainer, config)


def fit(trainer, config: TrainConfig):
    """``trainer.train()``, resuming from the last checkpoint of ``output_dir`` when asked and present."""
    from transformers.trainer_utils import get_last_checkpoint

    last = (
        get_last_checkpoint(config.output_dir) if config.resume and os.path.isdir(config.output_dir) else None
    )
    trainer.train(resume_from_checkpoint=last)
    return trainer


def _rows(config: TrainConfig) -> list[dict[str, Any]]:
    from aligngym.trajectory import read_trajectories

    return read_trajectories(config.data)


def train_dpo(config: TrainConfig, model, tokenizer):
    """TRL ``DPOTrainer`` on pairs built from ``config.data`` (chosen = higher reward of the same prompt)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = build_pairs(_rows(config), _pair_config(config))
    if not pairs:
        raise ConfigError(
            f"data: no preference pairs in {config.data} (need >= 2 successful trajectories of the same prompt "
            f"whose rewards differ by >= min_margin={config.min_margin})"
        )
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    args = DPOConfig(beta=config.beta or 0.1, **_common_args(config))
    return run_trainer(DPOTrainer, args, config, model, tokenizer, dataset, peft_config=peft_config(config))


def train_sft(config: TrainConfig, model, tokenizer):
    """TRL ``SFTTrainer`` on the kept trajectories, loss on assistant turns only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    kept = build_sft(_rows(config), _pair_config(config))
    if not kept:
        raise ConfigError(f"data: no trajectory in {config.data} passes reward_threshold/top_k")
    dataset = Dataset.from_list([{"messages": k["messages"]} for k in kept])
    # Environment turns are context, not targets: only the policy's own turns are trained on.
    args = SFTConfig(assistant_only_loss=True, **_common_args(config))
    return run_trainer(SFTTrainer, args, config, model, tokenizer, dataset, peft_config=peft_config(config))


def completion_logprob(model, tokenizer, prompt: list[dict], completion: list[dict]) -> float:
    """Sum of the model's log-probabilities of ``completion``'s tokens after ``prompt`` (chat-templated)."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=False)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logps[len(prompt_ids) - 1 :].sum())


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
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except OSError as exc:
        raise ConfigError(f"model: cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sequence classifiers find the last real token through pad_token_id; without it batches fail.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_reward(config: TrainConfig):
    """TRL ``RewardTrainer`` on pairs from ``config.data``: the env's preferences become a reward model."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs = build_pairs(_rows(config), _pair_config(config))
    if not pairs:
        raise ConfigError(f"data: no preference pairs in {config.data} (see min_margin)")
    model, tokenizer = load_reward_model(config.model)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    return run_trainer(RewardTrainer, RewardConfig(**_common_args(config)), config, model, tokenizer, dataset)


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
