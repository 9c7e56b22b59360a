"""``aligngym train``: load the policy, dispatch on ``method``, write metrics, plot and model."""

from __future__ import annotations

import random
from pathlib import Path

from .config import ConfigError, TrainConfig
from .logging import plot_reward_curve


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
    if config.method == "grpo":
        from .grpo import train_grpo

        trainer = train_grpo(config, model, tokenizer)
    else:  # validate() has already refused anything else
        raise AssertionError(config.method)
    out = Path(config.output_dir)
    plot_reward_curve(out, title=f"{config.method} on {config.env} ({config.model})")
    if config.save_model:
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
    return trainer
