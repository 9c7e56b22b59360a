"""Plumbing every TRL trainer of ``aligngym train`` shares: arguments, LoRA, checkpoints, the training call."""

from __future__ import annotations

import os
from typing import Any

from .config import TrainConfig
from .logging import MetricsCallback
from .train_console import install_console


def common_args(config: TrainConfig) -> dict[str, Any]:
    """TrainingArguments every method sets from the config; keys under ``trl:`` override them."""
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


def build_trainer(trainer_cls, args, config: TrainConfig, model, tokenizer, dataset, **extra: Any):
    """A TRL trainer with our metrics callback and progress bar (no printed dicts), not trained yet."""
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[MetricsCallback(config.output_dir, append=config.resume)],
        **extra,
    )
    install_console(trainer, config.method)
    return trainer


def run_trainer(trainer_cls, args, config: TrainConfig, model, tokenizer, dataset, **extra: Any):
    """Build a TRL trainer with our metrics callback, then train it (resuming when asked)."""
    return fit(build_trainer(trainer_cls, args, config, model, tokenizer, dataset, **extra), config)


def fit(trainer, config: TrainConfig):
    """``trainer.train()``, resuming from the last checkpoint of ``output_dir`` when asked and present."""
    from transformers.trainer_utils import get_last_checkpoint

    last = (
        get_last_checkpoint(config.output_dir) if config.resume and os.path.isdir(config.output_dir) else None
    )
    trainer.train(resume_from_checkpoint=last)
    return trainer
