"""Resident memory of many live environment instances (target: 1,000 instances in <= 500 MB).

    python benchmarks/memory.py --instances 1000
    python benchmarks/memory.py --quick          # smoke run: 10 instances, figures mean nothing

Each instance is reset and stepped once so it holds a real episode (chat history, task); sandboxes are
pooled, so code environments add no process per instance.
"""

from __future__ import annotations

import argparse
import gc
import os


def rss_mb() -> float:
    """This process's resident set size in MiB (from /proc)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument(
        "--envs",
        nargs="+",
        default=[
            "aligngym/Arithmetic-v0",
            "aligngym/TextWorld-v0",
            "aligngym/ToolUse-v0",
            "aligngym/Debate-v0",
        ],
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.instances = 10
    import aligngym

    print(f"{'environment':<26} {'instances':>9} {'RSS before':>11} {'RSS after':>10} {'per instance':>13}")
    for env_id in args.envs:
        gc.collect()
        before = rss_mb()
        envs = []
        for i in range(args.instances):
            env = aligngym.make(env_id)
            if hasattr(env, "possible_agents"):
                env.reset(seed=i)
                env.step({a: "42" for a in env.agents})
            else:
                env.reset(seed=i)
                env.step("42")
            envs.append(env)
        gc.collect()
        after = rss_mb()
        per = (after - before) / args.instances * 1024
        print(f"{env_id:<26} {args.instances:>9} {before:>9.0f}MB {after:>8.0f}MB {per:>10.1f} KiB")
        for env in envs:
            env.close()
        del envs


if __name__ == "__main__":
    main()
