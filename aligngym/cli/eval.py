"""``aligngym eval``: score models on envs (mean reward with its interval, pass@k, pass^k), or re-score stored
rollouts with today's grader (``--reverify``)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from .common import UsageError, check_env, json_object
from .rollout import add_backend_args, build_policies, check_counts, check_server

#: Rows of changed episodes the console lists after a reverify (the report has them all).
SHOWN_CHANGES = 20


def add_parser(sub) -> None:
    """Add ``eval`` to the subcommands."""
    ev = sub.add_parser(
        "eval",
        help="score models on envs: mean reward (95%% CI), pass@k, pass^k; or --reverify stored rollouts",
        description="Play TASKS tasks x SAMPLES samples of every ENV_ID with every --model (through the "
        "rollout engine), then write results.json, results.md, results.png and the trajectories to --out.",
    )
    ev.add_argument(
        "env_ids", metavar="ENV_ID", nargs="*", help="registered env ids, e.g. aligngym/Arithmetic-v0"
    )
    ev.add_argument(
        "--model",
        action="append",
        default=[],
        help="'tiny', a local path / hub name, or the server's model name; repeat it to compare models side "
        "by side (each plays every seat of a multi-agent env)",
    )
    ev.add_argument(
        "--samples", type=int, default=1, metavar="K", help="samples per task; pass@k for k <= K (default 1)"
    )
    ev.add_argument("--tasks", type=int, default=20, help="tasks (env seeds SEED..SEED+TASKS-1) per env (20)")
    ev.add_argument("--out", required=True, help="output folder (results and trajectories)")
    ev.add_argument("--seed", type=int, default=0, help="task i uses env seed SEED+i (default 0)")
    ev.add_argument(
        "--env-kwargs",
        action="append",
        default=[],
        metavar="[ENV_ID=]JSON",
        help="env arguments as a JSON object, for every env or (ENV_ID=JSON, repeatable) for one",
    )
    ev.add_argument("--concurrency", type=int, default=8, help="episodes in flight at once (default 8)")
    ev.add_argument(
        "--success-threshold",
        type=float,
        default=None,
        metavar="R",
        help="for envs with no notion of success: count reward >= R as one (else pass@k is not defined)",
    )
    ev.add_argument("--resume", action="store_true", help="keep the episodes already in --out's trajectories")
    ev.add_argument("--overwrite", action="store_true", help="replace --out's trajectories and results")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument(
        "--reverify",
        metavar="TRAJ.jsonl",
        help="re-score a trajectory file with today's envs and graders (replaying its stored replies); "
        "writes the re-scored rows and reverify.json to --out",
    )
    add_backend_args(ev)
    ev.set_defaults(run=lambda args: asyncio.run(_eval(args)))


def env_kwargs_by_env(values: list[str], env_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``--env-kwargs`` values (``JSON`` for every env, ``ENV_ID=JSON`` for one) as env id -> arguments."""
    out: dict[str, dict[str, Any]] = {env_id: {} for env_id in env_ids}
    for value in values:
        target, sep, text = value.partition("=")
        if not sep or value.lstrip().startswith("{"):
            for env_id in env_ids:
                out[env_id].update(json_object(value, "--env-kwargs"))
            continue
        if target not in out:
            raise UsageError(f"--env-kwargs names {target!r}, which is not one of the ENV_IDs given")
        out[target].update(json_object(text, f"--env-kwargs {target}"))
    return out


def _check_args(args: argparse.Namespace) -> None:
    if args.reverify:
        if args.env_ids or args.model:
            raise UsageError("--reverify re-scores a trajectory file: give no ENV_ID and no --model with it")
        return
    if not args.env_ids or not args.model:
        raise UsageError("give at least one ENV_ID and one --model (or --reverify TRAJ.jsonl)")
    if any("=" in m for m in args.model):
        raise UsageError("eval plays each --model in every seat; seat maps (SEAT=NAME) are for rollout")
    if len(set(args.model)) < len(args.model) or len(set(args.env_ids)) < len(args.env_ids):
        raise UsageError("each ENV_ID and each --model may be given once")
    check_counts(args)
    if args.samples < 1 or args.tasks < 1:
        raise UsageError("--samples and --tasks must be >= 1")
    if args.resume and args.overwrite:
        raise UsageError(
            "--resume keeps --out's trajectories and --overwrite replaces them: give one of them"
        )


def _check_out(args: argparse.Namespace, env_kwargs: dict[str, dict[str, Any]]) -> None:
    """Refuse to mix runs: existing trajectories need --resume (the same settings) or --overwrite."""
    from aligngym.evaluate import trajectory_path
    from aligngym.trajectory import RunKey, TrajectoryFileError, check_resumable

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder")
    for env_id in args.env_ids:
        for model in args.model:
            path = trajectory_path(out, env_id, model)
            if not path.exists() or not path.stat().st_size or args.overwrite:
                continue
            if not args.resume:
                raise UsageError(
                    f"{path} exists; pass --resume to continue that eval or --overwrite to replace it"
                )
            try:
                check_resumable(path, RunKey(env_id, args.seed, env_kwargs[env_id], args.samples))
            except TrajectoryFileError as exc:
                raise UsageError(str(exc)) from None


async def _eval(args: argparse.Namespace) -> int:
    from aligngym.console import quiet_libraries

    quiet_libraries()
    _check_args(args)
    if args.reverify:
        return await _reverify(args)
    env_kwargs = env_kwargs_by_env(args.env_kwargs, args.env_ids)
    for env_id in args.env_ids:
        check_env(env_id, env_kwargs[env_id], args.seed)
    _check_out(args, env_kwargs)
    built = build_policies(args.model, args)
    try:
        await check_server(built, args)
        results = await _run(args, built, env_kwargs)
    finally:
        for policy in built.values():
            await policy.aclose()
    _show(args, results)
    return 0


async def _run(args: argparse.Namespace, built: dict[str, Any], env_kwargs: dict[str, dict[str, Any]]):
    from aligngym.eval_report import write_reports
    from aligngym.evaluate import evaluate

    results = await evaluate(
        args.env_ids,
        built,
        tasks=args.tasks,
        samples=args.samples,
        out_dir=args.out,
        env_kwargs=env_kwargs,
        seed=args.seed,
        sampling_seed=args.sampling_seed,
        concurrency=args.concurrency,
        success_threshold=args.success_threshold,
        resume=args.resume,
        progress=not args.no_progress,
    )
    settings = {
        "tasks": args.tasks,
        "samples": args.samples,
        "seed": args.seed,
        "sampling_seed": args.sampling_seed,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "base_url": args.base_url,
        "env_kwargs": env_kwargs,
        "success_threshold": args.success_threshold,
    }
    write_reports(results, args.out, settings)
    return results


def _show(args: argparse.Namespace, results: list) -> None:
    from aligngym.console import print_summary
    from aligngym.eval_report import FILES, console_table

    print(console_table(results))
    for note in dict.fromkeys(r.note for r in results if r.note):
        print(note)
    out = Path(args.out)
    files = list(FILES.items())
    files += [(str(Path(r.trajectories).relative_to(out)), f"{r.env_id} | {r.model} rows") for r in results]
    episodes = sum(r.episodes for r in results)
    print_summary(
        f"eval: {len(args.env_ids)} env(s) x {len(args.model)} model(s), {args.tasks} tasks x {args.samples} "
        "samples",
        [("episodes", str(episodes)), ("errors", str(sum(r.errors for r in results)))],
        out,
        files,
    )


async def _reverify(args: argparse.Namespace) -> int:
    from aligngym.console import print_summary
    from aligngym.reverify import reverify
    from aligngym.trajectory import TrajectoryFileError

    source = Path(args.reverify)
    if not source.is_file():
        raise UsageError(f"trajectory file {args.reverify!r} not found")
    out = Path(args.out)
    target = out / f"{source.stem}.reverified.jsonl"
    report_path = out / "reverify.json"
    if (target.exists() or report_path.exists()) and not args.overwrite:
        raise UsageError(f"{target} or {report_path} exists; pass --overwrite to replace them")
    try:
        report = await reverify(source, target, concurrency=max(args.concurrency, 1))
    except TrajectoryFileError as exc:
        raise UsageError(str(exc)) from None
    report_path.write_text(report.to_json())
    for r in report.changed[:SHOWN_CHANGES]:
        seat = f" {r.agent_id}" if r.agent_id else ""
        flag = f"  (diverged: {r.diverged})" if r.diverged else ""
        print(
            f"episode {r.episode}{seat}: reward {r.old_reward:g} -> {r.new_reward}, success "
            f"{r.old_success} -> {r.new_success}{flag}"
        )
    if len(report.changed) > SHOWN_CHANGES:
        print(f"... and {len(report.changed) - SHOWN_CHANGES} more changed (see {report_path.name})")
    s = report.summary()

    def mean(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print_summary(
        f"reverify {source}",
        [
            (
                "rows re-scored",
                f"{s['rescored']} of {s['rows']} ({s['skipped']} failed rows kept as they were)",
            ),
            ("changed", str(s["changed"])),
            ("diverged", f"{s['diverged']} (the env's chat no longer matches the stored replies)"),
            ("mean reward", f"{mean(s['mean_reward_before'])} -> {mean(s['mean_reward_after'])}"),
        ],
        out,
        [(target.name, "the re-scored rows"), (report_path.name, "old vs new, per row")],
    )
    return 0
