"""GPU check: the tiny policy at a bigger size on CUDA, quickstart GRPO on it, and a local-agent rollout.

    bash scripts/gpu_check.sh            # on a GPU machine (also runs on CPU, with smaller numbers)

Prints step time of GRPO and tokens/s of generation on the GPU next to the same work on the CPU. Nothing is
downloaded: the bigger model is built locally like the tiny one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def bigger_model(hidden: int, layers: int) -> str:
    """Path of a locally built policy of this size (the tiny tokenizer, random weights)."""
    from aligngym.agents.tiny import TinyConfig, tiny_model_path

    heads = max(4, hidden // 64)
    return str(
        tiny_model_path(
            TinyConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=4 * hidden,
            )
        )
    )


def grpo_step_time(model_path: str, steps: int, device: str) -> float:
    """Seconds per GRPO step on the quickstart env, on ``device`` ("cuda" or "cpu")."""
    from aligngym.agents.tiny import load_model_and_tokenizer
    from aligngym.trainers.config import TrainConfig
    from aligngym.trainers.grpo import train_grpo

    config = TrainConfig(
        env="aligngym/Arithmetic-v0",
        env_kwargs={"max_operand": 4},
        model=model_path,
        max_steps=steps,
        batch_size=32,
        num_generations=8,
        max_new_tokens=2,
        logging_steps=steps,
        output_dir=tempfile.mkdtemp(prefix="gpu-check-"),
        trl={"use_cpu": device == "cpu", "disable_tqdm": True},
    )
    model, tokenizer = load_model_and_tokenizer(model_path, device=device)
    start = time.perf_counter()
    train_grpo(config, model, tokenizer)
    return (time.perf_counter() - start) / steps


def generation_tokens_per_s(model_path: str, episodes: int, device: str) -> float:
    """Generated tokens per second of a batched local-agent rollout on ``device``."""
    import aligngym
    from aligngym.agents.local import SamplingConfig, TransformersAgent

    agent = TransformersAgent(
        model_path, sampling=SamplingConfig(max_new_tokens=64), device=device, max_batch_size=64
    )
    counted = []
    original = agent._generate

    def generate(ids):
        out = original(ids)
        counted.extend(len(r.token_ids) for r in out)
        return out

    agent._generate = generate
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        asyncio.run(
            aligngym.rollout(
                "aligngym/Arithmetic-v0",
                agent,
                episodes=episodes,
                out=os.path.join(tmp, "r.jsonl"),
                concurrency=64,
                progress=False,
            )
        )
        return sum(counted) / (time.perf_counter() - start)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=256)
    args = parser.parse_args()
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    if devices == ["cpu"]:
        print("no CUDA device: CPU figures only")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    path = bigger_model(args.hidden, args.layers)
    print(f"policy: hidden {args.hidden}, {args.layers} layers (built locally at {path})")
    print(f"{'device':<6} {'GRPO s/step':>12} {'gen tokens/s':>13}")
    for device in devices:
        # The CPU does less of the same work, so a GPU run stays within its time budget.
        steps = args.steps if device == "cuda" else max(2, args.steps // 4)
        episodes = args.episodes if device == "cuda" else max(32, args.episodes // 4)
        step = grpo_step_time(path, steps, device)
        rate = generation_tokens_per_s(path, episodes, device)
        print(f"{device:<6} {step:>12.3f} {rate:>13.0f}")


if __name__ == "__main__":
    main()
