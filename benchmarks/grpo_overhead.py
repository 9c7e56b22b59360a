"""aligngym GRPO (the env plays every episode) against plain TRL ``GRPOTrainer`` on identical work.

    python benchmarks/grpo_overhead.py --steps 100 --repeats 3
    python benchmarks/grpo_overhead.py --quick               # smoke run (seconds): not a measurement

Like for like, and checked by the script after every round (it stops if not):

* the same data: both train on the env's prompt rows (``env_prompt_dataset``: Arithmetic-v0 seeds
  ``0..--prompts-1``, duplicate prompts dropped, in that order), and both saw the same prompts in the same
  order -- the seed of every sample, recorded in plain TRL's reward function and in aligngym's rollout_func;
* the same settings: the TRL arguments in ``COMPARED`` (batch, group size, completion length, sampling,
  beta, learning rate, seed, loss, steps per generation ...) read back from both trainers;
* the same amount: both ran ``--steps`` optimizer steps and reached the same epoch.

Both start from the tiny policy with the same init (loading it is not timed). Plain TRL gets the env's
reward as a reward function over the completion text; aligngym's GRPO plays each episode in the env through
TRL's ``rollout_func``. Timed: dataset + trainer construction + training (``setup+train``), and TRL's own
per-step time (its ``step_time`` metric: generation, scoring and backward). Rounds alternate the two, each
round starting with the other; the ratio is per round (median [min-max]); target aligngym <= 1.1x plain TRL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _bench_stats import interleave, paired, spread, verdict  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ENV, ENV_KWARGS = "aligngym/Arithmetic-v0", {"max_operand": 4}
#: TRL arguments that decide what is generated and trained; both trainers must agree on every one.
COMPARED = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "max_completion_length",
    "max_steps",
    "learning_rate",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "beta",
    "seed",
    "scale_rewards",
    "loss_type",
    "num_iterations",
    "steps_per_generation",
    "generation_batch_size",
    "shuffle_dataset",
    "epsilon",
)


@dataclass
class Settings:
    steps: int
    batch: int
    group: int
    new_tokens: int
    prompts: int
    logging_steps: int


@dataclass
class Run:
    """One training run: what it cost and what it did."""

    wall_s: float
    step_ms: float
    seeds: list[int]
    args: dict[str, Any]
    global_step: int
    epoch: float


def _finished(trainer: Any, wall_s: float, seeds: list[int]) -> Run:
    steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    return Run(
        wall_s=wall_s,
        step_ms=statistics.mean(steps) * 1000 if steps else float("nan"),
        seeds=list(seeds),
        args={k: getattr(trainer.args, k, None) for k in COMPARED},
        global_step=trainer.state.global_step,
        epoch=float(trainer.state.epoch or 0.0),
    )


def _policy():
    import torch

    from aligngym.agents.tiny import load_model_and_tokenizer

    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny")


def plain_trl(s: Settings, out: str) -> Run:
    """TRL's own GRPOTrainer generating with transformers; the env's reward computed from the text."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    import aligngym
    from aligngym.trainers.prompts import env_prompt_dataset

    model, tokenizer = _policy()
    env = aligngym.make(ENV, **ENV_KWARGS).unwrapped
    seeds: list[int] = []

    def env_reward(completions, seed, **kwargs) -> list[float]:
        seeds.extend(seed)
        rewards = []
        for completion, episode_seed in zip(completions, seed, strict=True):
            env.reset(seed=episode_seed)
            rewards.append(float(env.step(completion[0]["content"])[1]))
        return rewards

    start = time.perf_counter()
    dataset, _, _ = env_prompt_dataset(ENV, ENV_KWARGS, s.prompts)
    args = GRPOConfig(
        output_dir=out,
        max_steps=s.steps,
        learning_rate=1e-3,
        per_device_train_batch_size=s.batch,
        num_generations=s.group,
        max_completion_length=s.new_tokens,
        temperature=1.0,
        beta=0.0,
        logging_steps=s.logging_steps,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[env_reward], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    return _finished(trainer, time.perf_counter() - start, seeds)


def ours(s: Settings, out: str) -> Run:
    """aligngym's GRPO: the environment plays each episode through TRL's rollout_func."""
    from aligngym.trainers import grpo
    from aligngym.trainers.config import TrainConfig
    from aligngym.trainers.env_rollout import EnvRollout, prompt_key

    seeds: list[int] = []

    class RecordingRollout(EnvRollout):
        """Records each sample's seed (a dict lookup per prompt) before playing the batch."""

        def __call__(self, prompts, trainer):
            seeds.extend(self.tasks_by_prompt[prompt_key(p)][0] for p in prompts)
            return super().__call__(prompts, trainer)

    config = TrainConfig(
        env=ENV,
        env_kwargs=dict(ENV_KWARGS),
        num_prompts=s.prompts,
        max_steps=s.steps,
        learning_rate=1e-3,
        batch_size=s.batch,
        num_generations=s.group,
        max_new_tokens=s.new_tokens,
        logging_steps=s.logging_steps,
        output_dir=out,
        trl={"disable_tqdm": True},
    )
    model, tokenizer = _policy()
    grpo.EnvRollout = RecordingRollout  # train_grpo builds its rollout_func from this module-level name
    try:
        start = time.perf_counter()
        trainer = grpo.train_grpo(config, model, tokenizer)
        wall = time.perf_counter() - start
    finally:
        grpo.EnvRollout = EnvRollout
    return _finished(trainer, wall, seeds)


def same_work(a: Run, b: Run, s: Settings) -> list[str]:
    """Why two runs are not like for like (empty when they are)."""
    problems = []
    for key in COMPARED:
        if a.args[key] != b.args[key]:
            problems.append(f"TRL argument {key}: {a.args[key]!r} vs {b.args[key]!r}")
    if a.seeds != b.seeds:
        first = next((i for i, (x, y) in enumerate(zip(a.seeds, b.seeds, strict=False)) if x != y), None)
        problems.append(f"prompts differ: {len(a.seeds)} vs {len(b.seeds)} samples, first difference {first}")
    if len(a.seeds) != s.steps * s.batch:
        problems.append(f"{len(a.seeds)} samples generated, expected steps x batch = {s.steps * s.batch}")
    if (a.global_step, a.epoch) != (b.global_step, b.epoch) or a.global_step != s.steps:
        problems.append(f"steps/epoch: {a.global_step}/{a.epoch} vs {b.global_step}/{b.epoch}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs both trainers once")
    parser.add_argument("--batch", type=int, default=32, help="completions per step")
    parser.add_argument("--group", type=int, default=8, help="num_generations")
    parser.add_argument("--new-tokens", type=int, default=2, help="max_completion_length")
    parser.add_argument("--prompts", type=int, default=200, help="env seeds the dataset is built from")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.batch, args.group = 3, 1, 8, 4
    s = Settings(args.steps, args.batch, args.group, args.new_tokens, args.prompts, max(1, args.steps // 10))
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))
        runs = interleave(
            {
                "plain TRL GRPOTrainer": lambda: plain_trl(s, os.path.join(tmp, f"trl{next(counter)}")),
                "aligngym GRPO (env)": lambda: ours(s, os.path.join(tmp, f"ours{next(counter)}")),
            },
            args.repeats,
        )
    trl_runs, our_runs = runs.values()
    for a, b in zip(trl_runs, our_runs, strict=True):
        if problems := same_work(a, b, s):
            raise SystemExit("not like for like:\n  " + "\n  ".join(problems))
    first = trl_runs[0]
    print(f"\n{'QUICK smoke run (figures mean nothing): ' if args.quick else ''}GRPO on {ENV} {ENV_KWARGS}")
    print(
        f"like for like (checked every round): {len(first.seeds)} samples, same prompts in the same order, "
        f"{first.global_step} steps, epoch {first.epoch:.3f}, batch {s.batch}, group {s.group}, "
        f"{s.new_tokens} new tokens, same TRL arguments ({len(COMPARED)} compared); {args.repeats} round(s)"
    )
    print(f"{'trainer':<24} {'setup+train s':<22} {'ms/step (TRL step_time)':<24}")
    for name, rs in runs.items():
        print(
            f"{name:<24} {spread([r.wall_s for r in rs]):<22} {spread([r.step_ms for r in rs], digits=1):<24}"
        )
    steps = paired([r.step_ms for r in our_runs], [r.step_ms for r in trl_runs], lambda a, b: a / b)
    print(f"info ratio of TRL step_time, aligngym / TRL: {spread(steps, digits=3)}x")
    walls = paired([r.wall_s for r in our_runs], [r.wall_s for r in trl_runs], lambda a, b: a / b)
    print(verdict("GRPO setup+train wall, aligngym / plain TRL", walls, 1.1, "x", 3))


if __name__ == "__main__":
    main()
