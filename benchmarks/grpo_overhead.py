"""aligngym GRPO (environment-driven rollouts) against plain TRL GRPOTrainer on the same work.

    python benchmarks/grpo_overhead.py --steps 100

Both train the tiny policy on the same prompts (Arithmetic-v0 seeds), with the same group size, batch,
completion length and reward (plain TRL gets the environment's reward as a reward function over the text).
Prints the wall time of each and the ratio; the target is aligngym <= 1.1x plain TRL.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def plain_trl(steps: int, out: str) -> float:
    """Seconds for TRL's own GRPOTrainer generating with transformers, reward computed from text."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import aligngym
    from aligngym.agents.tiny import load_model_and_tokenizer

    env = aligngym.make("aligngym/Arithmetic-v0", max_operand=4).unwrapped
    rows = []
    for seed in range(200):
        _, info = env.reset(seed=seed)
        rows.append({"prompt": info["messages"], "seed": seed})

    def env_reward(completions, seed, **kwargs):
        rewards = []
        for completion, s in zip(completions, seed, strict=True):
            env.reset(seed=s)
            rewards.append(env.step(completion[0]["content"])[1])
        return rewards

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    args = GRPOConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=2,
        temperature=1.0,
        beta=0.0,
        logging_steps=10,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[env_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def ours(steps: int, out: str) -> float:
    """Seconds for aligngym's GRPO: the environment plays each episode through TRL's rollout_func."""
    import torch

    from aligngym.agents.tiny import load_model_and_tokenizer
    from aligngym.trainers.config import TrainConfig
    from aligngym.trainers.grpo import train_grpo

    config = TrainConfig(
        env="aligngym/Arithmetic-v0",
        env_kwargs={"max_operand": 4},
        num_prompts=200,
        max_steps=steps,
        learning_rate=1e-3,
        batch_size=32,
        num_generations=8,
        max_new_tokens=2,
        logging_steps=10,
        output_dir=out,
        trl={"disable_tqdm": True},
    )
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny")
    start = time.perf_counter()
    train_grpo(config, model, tokenizer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trl_times, our_times = [], []
        for _ in range(args.repeats):
            trl_times.append(plain_trl(args.steps, os.path.join(tmp, "trl")))
            our_times.append(ours(args.steps, os.path.join(tmp, "ours")))
    t, o = min(trl_times), min(our_times)
    print(f"{args.steps} GRPO steps, tiny policy, batch 32, group 8, 2 new tokens (best of {args.repeats})")
    print(f"plain TRL GRPOTrainer : {t:7.2f} s  ({t / args.steps * 1000:.1f} ms/step)")
    print(f"aligngym GRPO (env)   : {o:7.2f} s  ({o / args.steps * 1000:.1f} ms/step)")
    print(f"ratio aligngym / TRL  : {o / t:.3f}x  (target <= 1.1x)")


if __name__ == "__main__":
    main()
