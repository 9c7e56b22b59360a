"""``aligngym train``: train a policy from a YAML config and say where every file went."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    tr.add_argument(
        "--verbose",
        action="store_true",
        help="also print TRL's whole metrics dict at each logging step, and every library warning",
    )
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
    import time

    from aligngym.console import quiet_libraries
    from aligngym.envs.registry import UnknownEnvError, spec
    from aligngym.trainers.config import ConfigError, load_config

    quiet_libraries(verbose=args.verbose)
    try:
        config = load_config(args.config, output_dir=args.output_dir)
        spec(config.env)
        check_env(config.env, config.env_kwargs)
    except (ConfigError, UnknownEnvError) as exc:
        raise UsageError(str(exc)) from None
    from aligngym.trainers.run import train
    from aligngym.trainers.train_console import VERBOSE

    VERBOSE.set(args.verbose)
    started = time.time()
    try:
        train(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not _leave_process_group():
        return 0  # another process of a multi-process launch: the main one reports
    _summary(config, started)
    return 0


def _summary(config, started: float) -> None:
    """The run's end: final reward (or loss), greedy score when measured, and every file it wrote."""
    import time

    from aligngym.console import format_duration, print_summary
    from aligngym.trainers.held_out import HELD_OUT_FILE
    from aligngym.trainers.logging import METRICS_FILE, read_metrics
    from aligngym.trainers.train_console import (
        describe,
        final_figures,
        held_out_figures,
        round_figures,
        written,
    )

    out = config.output_dir
    rows = read_metrics(out) if (Path(out) / METRICS_FILE).exists() else []
    iterate = config.method == "iterate"
    figures = round_figures(rows) if iterate else final_figures(rows)
    figures += held_out_figures(Path(out) / HELD_OUT_FILE)
    # Files older than the run are an earlier run's; the margin covers the filesystem clock's coarser steps.
    names = written(out, since=started - 1.0)
    files = [(n + "/" if (Path(out) / n).is_dir() else n, describe(n, iterate)) for n in names]
    title = f"{config.method} on {config.env} finished in {format_duration(time.time() - started)}"
    print_summary(title, figures, out, files)


def _written(output_dir: str, since: float | None = None) -> list[str]:
    """The artifacts a training run left in ``output_dir`` (since ``since``), as the user would name them."""
    from aligngym.trainers.train_console import written

    return written(output_dir, since) or ["nothing"]
