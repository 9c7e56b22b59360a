"""Online RL (GRPO, RLOO) from any registered environment with TRL's ``GRPOTrainer``; the env drives generation."""

from __future__ import annotations

import os

from .config import TrainConfig
from .env_rollout import EnvRollout
from .prompts import env_prompt_dataset
from .trl_setup import checkpointing, peft_config, run_trainer


def _reward_func(name: str, key: str):
    def reward(completions, **kwargs) -> list[float]:
        return [float(x) for x in kwargs[key]]

    reward.__name__ = name
    return reward


def train_grpo(config: TrainConfig, model, tokenizer):
    """Run GRPO on ``config.env``; return the trainer after training."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from aligngym.agents.local import SamplingConfig

    dataset, tasks, components = env_prompt_dataset(config.env, config.env_kwargs, config.num_prompts)
    rollout = EnvRollout(
        config.env,
        config.env_kwargs,
        tasks,
        SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature),
        failed_path=os.path.join(config.output_dir, "failed_episodes.jsonl"),
    )
    rollout.component_names = components
    # The env's scalar reward trains; its components ride along with weight 0 so TRL logs each of them.
    reward_funcs = [_reward_func("env", "env_reward")]
    reward_funcs += [_reward_func(name, f"component_{name}") for name in components]
    env_weight, scale_rewards = 1.0, "group"
    if config.method == "rloo":
        # REINFORCE leave-one-out: A_i = r_i - mean of the other G-1 rewards = G/(G-1) * (r_i - group mean),
        # i.e. GRPO's centred advantage without std scaling, reward scaled by G/(G-1). TRL's RLOOTrainer has
        # no rollout_func/env_mask hook, so this keeps multi-turn environment tokens masked.
        g = config.num_generations
        env_weight, scale_rewards = g / (g - 1), "none"
    defaults = {
        "output_dir": config.output_dir,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_new_tokens,
        "temperature": config.temperature,
        "beta": config.beta,
        "logging_steps": config.logging_steps,
        "seed": config.seed,
        "reward_weights": [env_weight] + [0.0] * len(components),
        "scale_rewards": scale_rewards,
        "use_cpu": not _cuda(),
        "bf16": False,
        "report_to": "none",
        "disable_tqdm": False,
        "use_vllm": config.use_vllm,
        "vllm_mode": config.vllm_mode,
        **checkpointing(config),
    }
    # Keys under `trl:` in the config override ours.
    args = GRPOConfig(**{**defaults, **config.trl})
    return run_trainer(
        GRPOTrainer,
        args,
        config,
        model,
        tokenizer,
        dataset,
        reward_funcs=reward_funcs,
        rollout_func=rollout,
        peft_config=peft_config(config),
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
