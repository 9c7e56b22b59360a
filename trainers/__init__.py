"""Trainers that turn environment rewards into policy updates, on TRL."""

from .config import METHODS, ConfigError, TrainConfig, load_config

__all__ = [
    "METHODS",
    "ConfigError",
    "TrainConfig",
    "as_trl_environment",
    "env_prompt_dataset",
    "load_config",
    "train",
]


def __getattr__(name: str):
    # train() pulls in torch and TRL; load them only when training is asked for.
    if name == "train":
        from .run import train

        return train
    if name == "as_trl_environment":
        from .trl_env import as_trl_environment

        return as_trl_environment
    if name == "env_prompt_dataset":
        from .prompts import env_prompt_dataset

        return env_prompt_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
