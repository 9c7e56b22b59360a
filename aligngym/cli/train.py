"""``aligngym train``: train a policy from a YAML config and say where every file went."""

from __future__ import annotations

import argparse

from .common import UsageError, check_env


def add_parser(sub) -> None:
    """Add ``train`` to the subcommands."""
    from aligngym.trainers.config import help_text

    tr = sub.add_parser(
        "train",
        help="train a policy from environment rewards (TRL)",
        description="Train from a YAML config whose keys are listed below (unknown keys are an error).",
        epilog=f"config keys, grouped by the methods that read them:\n\n{help_text()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("config", metavar="CONFIG.yaml", help="training config (see examples/quickstart.yaml)")
    tr.add_argument("--output-dir", help="overrides output_dir of the config")
    tr.set_defaults(run=_cmd_train)


def _leave_process_group() -> bool:
    """Meet the other processes of a torchrun/accelerate launch and tear the group down; True on the main one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    rank, size = dist.get_rank(), dist.get_world_size()
    # Without this, a process that exits while gloo's threads still run aborts ("terminate called
    # without an active exception") and the launcher then kills the others mid-write.
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        print(f"process {rank} of {size} finished; the main process writes the files")
    return rank == 0


def _cmd_train(args: argparse.Namespace) -> int:
    from aligngym.envs.registry import UnknownEnvError, spec
    from aligngym.trainers.config import ConfigError, load_config
    from aligngym.trainers.logging import quarter_means, read_metrics

    try:
        config = load_config(args.config, output_dir=args.output_dir)
        spec(config.env)
        check_env(config.env, config.env_kwargs)
    except (ConfigError, UnknownEnvError) as exc:
        raise UsageError(str(exc)) from None
    from aligngym.trainers.run import train

    try:
        train(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not _leave_process_group():
        return 0  # another process of a multi-process launch: the main one reports
    rows = [r for r in read_metrics(config.output_dir) if r.get("reward") is not None]
    if len(rows) >= 4:
        first, last = quarter_means(rows)
        print(f"mean reward: first quarter {first:.4f} -> last quarter {last:.4f}")
    print(f"{', '.join(_written(config.output_dir))} written to {config.output_dir}")
    return 0


def _written(output_dir: str) -> list[str]:
    """The artifacts a training run left in ``output_dir``, as the user would name them."""
    from pathlib import Path

    from aligngym.trainers.logging import METRICS_FILE

    out = Path(output_dir)
    names = [METRICS_FILE] if (out / METRICS_FILE).exists() else []
    names += sorted(p.name for p in out.glob("*.png"))
    return names + (["model"] if (out / "model").is_dir() else []) or ["nothing"]
