"""``aligngym train``: load the policy, dispatch on ``method``, write metrics, plot and model."""

from __future__ import annotations

import random
from pathlib import Path

from .config import ConfigError, TrainConfig
from .held_out import HeldOut, summary_line, write_held_out
from .logging import plot_metric, plot_reward_curve


def _grpo(config, model, tokenizer):
    from .grpo import train_grpo

    return train_grpo(config, model, tokenizer)


def _dpo(config, model, tokenizer):
    from .offline import train_dpo

    return train_dpo(config, model, tokenizer)


def _sft(config, model, tokenizer):
    from .offline import train_sft

    return train_sft(config, model, tokenizer)


#: Policy-training methods (``reward`` trains a classifier instead and is handled apart).
_METHODS = {"grpo": _grpo, "rloo": _grpo, "dpo": _dpo, "sft": _sft}


def _train_policy(config: TrainConfig, model, tokenizer):
    """Train ``model`` with the config's policy method; returns the (last) TRL trainer."""
    if config.method == "iterate":
        from .iterate import train_iterate

        return train_iterate(config, model, tokenizer, _METHODS)
    return _METHODS[config.method](config, model, tokenizer)


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
    if config.method == "reward":
        from .offline import train_reward

        trainer = train_reward(config)
        tokenizer = trainer.processing_class
    else:
        try:
            model, tokenizer = load_model_and_tokenizer(config.model)
        except OSError as exc:  # transformers' "not a folder or hub id" family
            raise ConfigError(f"model: cannot load {config.model!r}: {str(exc).splitlines()[0]}") from None
        held_out = HeldOut(config) if config.eval_episodes else None
        before = held_out.score(model, tokenizer) if held_out else None
        trainer = _train_policy(config, model, tokenizer)
        if held_out:
            # Every process scores (a sharded model generates collectively); the main one reports.
            after = held_out.score(trainer.accelerator.unwrap_model(trainer.model), tokenizer)
            if trainer.args.should_save:
                write_held_out(config.output_dir, before, after)
                print(summary_line(before, after), flush=True)
    out = Path(config.output_dir)
    if config.save_model:
        trainer.save_model(str(out / "model"))  # a collective under ZeRO-3/FSDP: every process calls it
    if not trainer.args.should_save:
        return trainer  # other processes of a multi-GPU run: the main one writes the files
    plot_reward_curve(out, title=f"{config.method} on {config.env} ({config.model})")
    plot_metric(out, "loss", "loss_curve.png", title=f"{config.method} loss")
    plot_metric(out, "rewards/margins", "margin_curve.png", title="DPO implicit reward margin")
    plot_metric(out, "accuracy", "accuracy_curve.png", title="reward model pair accuracy")
    if config.save_model:
        tokenizer.save_pretrained(str(out / "model"))
    return trainer
