"""``aligngym rollout``: run an agent in an environment and write trajectories as JSONL."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .common import UsageError, check_env, json_object

#: A run stops when its first this-many episodes all fail with the same error: a broken setup, not bad luck.
FAIL_FAST_EPISODES = 3


def add_parser(sub) -> None:
    """Add ``rollout`` to the subcommands."""
    ro = sub.add_parser("rollout", help="run an agent in an environment and write trajectories as JSONL")
    ro.add_argument("env_id", metavar="ENV_ID", help="registered id, e.g. aligngym/CodeExec-v0")
    ro.add_argument(
        "--model",
        required=True,
        action="append",
        help="'tiny', a local path / hub name, or the server's model name; multi-agent envs: repeat it "
        "(one per seat, in seat order) or write SEAT=NAME; one --model plays every seat (self-play)",
    )
    add_backend_args(ro)
    ro.add_argument(
        "--episodes",
        type=int,
        required=True,
        help="number of prompts (env seeds); each is played --samples-per-prompt times",
    )
    ro.add_argument(
        "--samples-per-prompt",
        type=int,
        default=1,
        metavar="N",
        help="play each prompt (the same env seed) N times: for pairs, pass@k and GRPO-style groups (default 1)",
    )
    ro.add_argument("--concurrency", type=int, default=8, help="episodes in flight at once (default 8)")
    ro.add_argument(
        "--env-kwargs", default="{}", help="JSON object of env arguments, e.g. '{\"max_turns\": 3}'"
    )
    ro.add_argument("--out", required=True, help="output JSONL file")
    ro.add_argument("--resume", action="store_true", help="skip the episodes already complete in --out")
    ro.add_argument(
        "--overwrite", action="store_true", help="replace --out when it exists (its rows are lost)"
    )
    ro.add_argument("--seed", type=int, default=0, help="prompt i uses env seed SEED+i (default 0)")
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
    ro.set_defaults(run=lambda args: asyncio.run(_rollout(args)))


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """The options that say where a policy runs and how it samples (``rollout`` and ``eval`` share them)."""
    parser.add_argument(
        "--base-url",
        action="append",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vllm serve); repeat it for several "
        "servers (least outstanding requests, one episode per server)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens per assistant turn")
    parser.add_argument("--api-key", default="EMPTY", help="API key for --base-url (default EMPTY)")
    parser.add_argument(
        "--sampling-seed",
        type=int,
        default=None,
        metavar="S",
        help="make sampling reproducible where the backend allows: each request of a --base-url server gets "
        "its own seed derived from S (vLLM honours it); a local model seeds torch with S (the same at "
        "--concurrency 1). Default: unseeded",
    )


def build_policies(names: list[str], args: argparse.Namespace, load: bool = True) -> dict[str, Any]:
    """Model name -> agent for each of ``names`` (``tiny``, a local path / hub name, or a server's model).

    ``load=False`` only checks that local models can load (Ray workers load their own copy). A model that
    cannot load is a ``UsageError``.
    """
    from aligngym.agents.factory import build_agent

    extra = {"api_key": args.api_key} if args.base_url else {}
    if args.base_url and getattr(args, "return_tokens", False):
        extra["return_tokens"] = True
    built: dict[str, Any] = {}
    name = ""
    try:
        for name in dict.fromkeys(names):
            if not load and not args.base_url:
                _check_local_model(name)
                continue
            built[name] = build_agent(
                name, args.base_url, temperature=args.temperature, max_tokens=args.max_tokens, **extra
            )
    except OSError as exc:  # transformers' "not a local folder or hub id" family
        raise UsageError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    return built


async def check_server(built: dict[str, Any], args: argparse.Namespace) -> None:
    """With --base-url, fail fast (a ``UsageError``) when the server does not answer."""
    from aligngym.agents.base import AgentError

    if args.base_url and built:
        try:
            await next(iter(built.values())).check()
        except AgentError as exc:
            raise UsageError(str(exc)) from None


def check_counts(args: argparse.Namespace) -> None:
    """The numeric options ``rollout`` and ``eval`` share, each in its range."""
    if args.concurrency < 1:
        raise UsageError("--concurrency must be >= 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError("--max-tokens must be >= 1")
    if args.sampling_seed is not None and args.sampling_seed < 0:
        raise UsageError("--sampling-seed must be >= 0")


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
            check_resumable(out, RunKey(args.env_id, args.seed, env_kwargs, args.samples_per_prompt))
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
        workers=args.workers,
        ray_address=args.ray_address,
        max_sandboxes=args.max_sandboxes,
        **_run_options(args, env_kwargs),
    )


def _run_options(args: argparse.Namespace, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments a local and a Ray rollout take alike."""
    return {
        "episodes": args.episodes,
        "out": args.out,
        "concurrency": args.concurrency,
        "env_kwargs": env_kwargs,
        "seed": args.seed,
        "resume": args.resume,
        "progress": not args.no_progress,
        "fail_fast": args.fail_fast,
        "samples_per_prompt": args.samples_per_prompt,
        "sampling_seed": args.sampling_seed,
    }


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
    from aligngym.console import quiet_libraries
    from aligngym.rollout import RolloutAborted, rollout

    quiet_libraries()
    env_kwargs = json_object(args.env_kwargs, "--env-kwargs")
    check_counts(args)
    if args.episodes < 0 or args.fail_fast < 0:
        raise UsageError("--episodes and --fail-fast must be >= 0")
    if args.samples_per_prompt < 1:
        raise UsageError("--samples-per-prompt must be >= 1")
    if args.max_sandboxes is not None and args.max_sandboxes < 1:
        raise UsageError("--max-sandboxes must be >= 1")
    if args.max_sandboxes is not None and not args.workers:
        from aligngym.sandboxes.cap import set_max_sandboxes

        set_max_sandboxes(args.max_sandboxes)
    _check_out(args, env_kwargs)
    check_env(args.env_id, env_kwargs, args.seed)
    seat_models = _seat_models(args.env_id, env_kwargs, args.model)
    names = list(seat_models.values()) if seat_models else args.model
    # Ray workers load local models themselves; the driver need not hold a copy.
    built = build_policies(names, args, load=not args.workers)
    try:
        await check_server(built, args)
        if args.workers:
            summary = await _rollout_on_ray(args, env_kwargs, seat_models)
        else:
            agent = {s: built[m] for s, m in seat_models.items()} if seat_models else built[args.model[0]]
            summary = await rollout(args.env_id, agent, **_run_options(args, env_kwargs))
    except RolloutAborted as exc:
        print(f"aligngym: {exc} (rows written to {args.out})", file=sys.stderr)
        return 1
    finally:
        for policy in built.values():
            await policy.aclose()
    _print_summary(args, summary)
    return 0


def _print_summary(args: argparse.Namespace, summary) -> None:
    """The run's figures and where its rows went, in the shared end-of-run style."""
    from pathlib import Path

    from aligngym.console import print_summary

    groups = (
        f" ({args.episodes} prompts x {args.samples_per_prompt} samples)"
        if args.samples_per_prompt > 1
        else ""
    )
    figures = [
        ("mean reward", f"{summary.mean_reward:.4f} (episodes without error)"),
        ("errors", f"{summary.errors} (recorded in the file with their error)"),
        ("skipped", f"{summary.skipped} already done"),
        ("speed", f"{summary.episodes_per_s:.1f} episodes/s"),
    ]
    if summary.sandboxes_peak:
        figures.append(("sandboxes", f"at most {summary.sandboxes_peak} live"))
    out = Path(summary.path)
    print_summary(
        f"wrote {summary.written} episodes{groups}",
        figures,
        where=out.parent,
        files=[(out.name, "trajectories, one JSON row per episode (per seat in multi-agent envs)")],
    )
