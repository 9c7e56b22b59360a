"""``aligngym train``: load the policy, dispatch on ``method``, write metrics, plot and model."""

from __future__ import annotations

import random
from pathlib import Path

from .config import ConfigError, TrainConfig
from .logging import plot_metric, plot_reward_curve


def train(config: TrainConfig):
    """Run the training that ``config`` describes; returns the TRL trainer."""
    import numpy as np
    import torch

    from aligngym.agents.tiny import load_model_and_tokenizer
    from aligngym.envs.registry import spec

    config.validate()
    spec(config.env)  # unknown env ids fail before the model loads
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    try:
        model, tokenizer = load_model_and_tokenizer(config.model)
    except OSError as exc:  # transformers' "not a folder or hub id" family
        raise ConfigError(f"model: cannot load {config.model!r}: {str(exc).splitlines()[0]}") from None
    if config.method in ("grpo", "rloo"):
        from .grpo import train_grpo

        trainer = train_grpo(config, model, tokenizer)
    elif config.method == "dpo":
        from .offline import train_dpo

        trainer = train_dpo(config, model, tokenizer)
    else:
        from .offline import train_sft

        trainer = train_sft(config, model, tokenizer)
    out = Path(config.output_dir)
    plot_reward_curve(out, title=f"{config.method} on {config.env} ({config.model})")
    plot_metric(out, "loss", "loss_curve.png", title=f"{config.method} loss")
    plot_metric(out, "rewards/margins", "margin_curve.png", title="DPO implicit reward margin")
    if config.save_model:
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
    return trainer
