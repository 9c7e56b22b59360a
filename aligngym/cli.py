"""The ``aligngym`` command: list environments, run rollouts, train.

Every user error (unknown env id, bad JSON, bad YAML, unreachable server) is one line on stderr and exit
code 2; a crash in our own code keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_USAGE = 2
#: A run stops when its first this-many episodes all fail with the same error: a broken setup, not bad luck.
FAIL_FAST_EPISODES = 3


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aligngym", description="Every alignment signal is an environment.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("envs", help="list registered environment ids")

    ro = sub.add_parser("rollout", help="run an agent in an environment and write trajectories as JSONL")
    ro.add_argument("env_id", metavar="ENV_ID", help="registered id, e.g. aligngym/CodeExec-v0")
    ro.add_argument(
        "--model",
        required=True,
        action="append",
        help="'tiny', a local path / hub name, or the server's model name; multi-agent envs: repeat it "
        "(one per seat, in seat order) or write SEAT=NAME; one --model plays every seat (self-play)",
    )
    ro.add_argument(
        "--base-url",
        action="append",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vllm serve); repeat it for several "
        "servers (least outstanding requests, one episode per server)",
    )
    ro.add_argument("--episodes", type=int, required=True, help="number of episodes")
    ro.add_argument("--concurrency", type=int, default=8, help="episodes in flight at once (default 8)")
    ro.add_argument(
        "--env-kwargs", default="{}", help="JSON object of env arguments, e.g. '{\"max_turns\": 3}'"
    )
    ro.add_argument("--out", required=True, help="output JSONL file")
    ro.add_argument("--resume", action="store_true", help="skip the episodes already complete in --out")
    ro.add_argument(
        "--overwrite", action="store_true", help="replace --out when it exists (its rows are lost)"
    )
    ro.add_argument("--seed", type=int, default=0, help="episode i uses seed SEED+i (default 0)")
    ro.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ro.add_argument("--max-tokens", type=int, default=None, help="most tokens per assistant turn")
    ro.add_argument("--api-key", default="EMPTY", help="API key for --base-url (default EMPTY)")
    ro.add_argument("--no-progress", action="store_true", help="no progress bar")
    ro.add_argument(
        "--return-tokens",
        action="store_true",
        help="ask the --base-url server (vLLM) for the sampled token ids and logprobs; stored per turn",
    )
    ro.add_argument(
        "--fail-fast",
        type=int,
        default=FAIL_FAST_EPISODES,
        metavar="N",
        help="stop when the first N episodes all fail with the same error (default %(default)s; 0: never)",
    )
    ro.add_argument(
        "--workers", type=int, default=0, help="run on N Ray actors (pip install 'aligngym[ray]')"
    )
    ro.add_argument("--ray-address", default=None, help="an existing Ray cluster ('auto' or HOST:PORT)")
    ro.add_argument(
        "--max-sandboxes",
        type=int,
        default=None,
        help="most sandboxes live at once: across all --workers (cluster-wide), else in this process",
    )

    pa = sub.add_parser("pairs", help="build DPO preference pairs from trajectories")
    pa.add_argument("trajectories", metavar="TRAJ.jsonl", help="output of `aligngym rollout`")
    pa.add_argument("--out", required=True, help="pairs JSONL (prompt, chosen, rejected, rewards)")
    pa.add_argument("--min-margin", type=float, default=0.1, help="least reward gap (default 0.1)")
    pa.add_argument("--max-pairs-per-prompt", type=int, default=4, help="most pairs per prompt (default 4)")

    sx = sub.add_parser("sandbox", help="sandbox backends: build the docker image")
    sx_sub = sx.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")
    bu = sx_sub.add_parser("build", help="build the docker sandbox image here (debootstrap, no registry)")
    bu.add_argument("--python", default="3.11", help="3.11 (Debian bookworm) or 3.13 (trixie); default 3.11")
    bu.add_argument("--packages", default="", help="comma-separated pip packages (wheels), e.g. numpy,sympy")
    bu.add_argument("--tag", default="aligngym-sandbox:latest", help="image tag (default %(default)s)")
    bu.add_argument("--rebuild", action="store_true", help="build even when the image is up to date")

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
    return parser


def _cmd_envs(_: argparse.Namespace) -> int:
    from aligngym.envs import registered

    entries = registered()
    width = max((len(i) for i in entries), default=0)
    for env_id, entry in entries.items():
        kind = "multi-agent" if entry.multi_agent else "single-agent"
        print(f"{env_id:<{width}}  {kind:<12}  {entry.description}")
    return 0


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc.msg} at char {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object like '{{\"max_turns\": 3}}', got {text!r}")
    return value


def _check_env(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> None:
    from aligngym.env_check import EnvArgsError, check_env
    from aligngym.envs.registry import UnknownEnvError

    try:
        check_env(env_id, env_kwargs, seed)
    except (UnknownEnvError, EnvArgsError) as exc:
        raise UsageError(str(exc)) from None


def _check_out(args: argparse.Namespace, env_kwargs: dict[str, Any]) -> None:
    """Refuse an --out that would lose rows: an existing file needs --resume (same run) or --overwrite."""
    from pathlib import Path

    from aligngym.trajectory import RunKey, TrajectoryFileError, check_resumable

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(
            f"--out {args.out!r} is a directory; give a file path such as {out / 'rollout.jsonl'}"
        )
    if args.resume and args.overwrite:
        raise UsageError("--resume keeps --out and --overwrite replaces it: give one of them")
    if out.exists() and out.stat().st_size and not (args.resume or args.overwrite):
        raise UsageError(
            f"--out {args.out!r} exists; pass --resume to continue that run or --overwrite to replace it"
        )
    if args.resume:
        try:
            check_resumable(out, RunKey(args.env_id, args.seed, env_kwargs))
        except TrajectoryFileError as exc:
            raise UsageError(str(exc)) from None


async def _rollout_on_ray(
    args: argparse.Namespace, env_kwargs: dict[str, Any], seat_models: dict[str, str] | None
):
    try:
        import ray  # noqa: F401

        from aligngym.distributed import connect_ray, rollout_ray
    except ImportError:
        raise UsageError("--workers needs Ray: pip install 'aligngym[ray]'") from None
    try:
        connect_ray(args.ray_address)
    except ConnectionError as exc:
        raise UsageError(
            f"cannot reach the Ray cluster at {args.ray_address!r} ({str(exc).splitlines()[0]}); start one "
            "with `ray start --head` and pass its HOST:PORT (or 'auto'), or leave --ray-address out"
        ) from None

    def spec(model: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "temperature": args.temperature, "max_tokens": args.max_tokens}
        if args.base_url:
            out.update(base_url=args.base_url, api_key=args.api_key, return_tokens=args.return_tokens)
        return out

    agent_spec = (
        {"seats": {s: spec(m) for s, m in seat_models.items()}} if seat_models else spec(args.model[0])
    )
    return await rollout_ray(
        args.env_id,
        agent_spec,
        episodes=args.episodes,
        out=args.out,
        workers=args.workers,
        concurrency=args.concurrency,
        env_kwargs=env_kwargs,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        ray_address=args.ray_address,
        max_sandboxes=args.max_sandboxes,
        fail_fast=args.fail_fast,
    )


def _check_local_model(name: str) -> None:
    """Raise OSError unless ``name`` is a model transformers can load (its config is enough to tell)."""
    if name != "tiny":
        from transformers import AutoConfig

        from aligngym.agents.tiny import model_source_problem

        problem = model_source_problem(name)
        if problem:
            raise OSError(problem)
        AutoConfig.from_pretrained(name)


def _seat_models(env_id: str, env_kwargs: dict[str, Any], models: list[str]) -> dict[str, str] | None:
    """Seat -> model name for multi-agent envs (None for single-agent ones)."""
    from aligngym.envs.registry import make, spec

    if not spec(env_id).multi_agent:
        if len(models) > 1:
            raise UsageError(f"{env_id} is single-agent: give --model once")
        return None
    env = make(env_id, **env_kwargs)
    seats = list(env.possible_agents)
    env.close()
    named = [m.split("=", 1) for m in models if "=" in m]
    if named:
        if len(named) != len(models):
            raise UsageError("give every --model as SEAT=NAME, or none of them")
        mapping = dict(named)
        wrong = sorted(set(mapping) ^ set(seats))
        if wrong:
            raise UsageError(f"--model seats must be exactly {', '.join(seats)}; check {', '.join(wrong)}")
        return {seat: mapping[seat] for seat in seats}
    if len(models) == 1:
        return dict.fromkeys(seats, models[0])
    if len(models) != len(seats):
        raise UsageError(
            f"{env_id} has {len(seats)} seats ({', '.join(seats)}); give 1 or {len(seats)} --model"
        )
    return dict(zip(seats, models, strict=True))


async def _rollout(args: argparse.Namespace) -> int:
    from aligngym.agents.base import AgentError
    from aligngym.agents.factory import build_agent
    from aligngym.rollout import RolloutAborted, rollout

    env_kwargs = _json_object(args.env_kwargs, "--env-kwargs")
    if args.episodes < 0 or args.concurrency < 1 or args.fail_fast < 0:
        raise UsageError("--episodes and --fail-fast must be >= 0 and --concurrency >= 1")
    if args.max_sandboxes is not None and args.max_sandboxes < 1:
        raise UsageError("--max-sandboxes must be >= 1")
    if args.max_sandboxes is not None and not args.workers:
        from aligngym.sandboxes.cap import set_max_sandboxes

        set_max_sandboxes(args.max_sandboxes)
    _check_out(args, env_kwargs)
    _check_env(args.env_id, env_kwargs, args.seed)
    seat_models = _seat_models(args.env_id, env_kwargs, args.model)
    extra = {"api_key": args.api_key, "return_tokens": args.return_tokens} if args.base_url else {}
    built: dict[str, Any] = {}
    try:
        for name in dict.fromkeys(seat_models.values() if seat_models else args.model):
            if args.workers and not args.base_url:
                _check_local_model(name)  # each worker loads it; the driver need not hold a copy
                continue
            built[name] = build_agent(
                name, args.base_url, temperature=args.temperature, max_tokens=args.max_tokens, **extra
            )
    except OSError as exc:  # transformers' "not a local folder or hub id" family
        raise UsageError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    try:
        if args.base_url:
            try:
                await next(iter(built.values())).check()
            except AgentError as exc:
                raise UsageError(str(exc)) from None
        if args.workers:
            summary = await _rollout_on_ray(args, env_kwargs, seat_models)
        else:
            agent = {s: built[m] for s, m in seat_models.items()} if seat_models else built[args.model[0]]
            summary = await rollout(
                args.env_id,
                agent,
                episodes=args.episodes,
                out=args.out,
                concurrency=args.concurrency,
                env_kwargs=env_kwargs,
                seed=args.seed,
                resume=args.resume,
                progress=not args.no_progress,
                fail_fast=args.fail_fast,
            )
    except RolloutAborted as exc:
        print(f"aligngym: {exc} (rows written to {args.out})", file=sys.stderr)
        return 1
    finally:
        for policy in built.values():
            await policy.aclose()
    print(
        f"wrote {summary.written} episodes to {summary.path} "
        f"(skipped {summary.skipped} already done, {summary.errors} errors, "
        f"mean reward {summary.mean_reward:.4f}, {summary.episodes_per_s:.1f} episodes/s"
        + (f", at most {summary.sandboxes_peak} sandboxes live" if summary.sandboxes_peak else "")
        + ")"
    )
    return 0


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
        _check_env(config.env, config.env_kwargs)
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


def _cmd_pairs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aligngym.trainers.pairs import PairConfig, build_pairs, write_jsonl
    from aligngym.trajectory import TrajectoryFileError, read_trajectories

    if not Path(args.trajectories).exists():
        raise UsageError(f"trajectory file {args.trajectories!r} not found")
    try:
        rows = read_trajectories(args.trajectories)
    except TrajectoryFileError as exc:
        raise UsageError(str(exc)) from None
    if not rows and Path(args.trajectories).stat().st_size:
        raise UsageError(
            f"{args.trajectories!r} holds no trajectory rows; is it the output of `aligngym rollout`?"
        )
    pairs = build_pairs(
        rows, PairConfig(min_margin=args.min_margin, max_pairs_per_prompt=args.max_pairs_per_prompt)
    )
    n = write_jsonl(pairs, args.out)
    print(f"wrote {n} pairs from {len(rows)} trajectories to {args.out}")
    return 0


def _cmd_sandbox_build(args: argparse.Namespace) -> int:
    from aligngym.sandboxes import SandboxError, build_image

    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    try:
        build_image(args.tag, python=args.python, packages=packages, rebuild=args.rebuild)
    except (SandboxError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aligngym`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "envs":
            return _cmd_envs(args)
        if args.command == "rollout":
            return asyncio.run(_rollout(args))
        if args.command == "pairs":
            return _cmd_pairs(args)
        if args.command == "sandbox":
            return _cmd_sandbox_build(args)
        return _cmd_train(args)
    except UsageError as exc:
        print(f"aligngym: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aligngym: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
