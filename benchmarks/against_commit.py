"""Run a benchmark on this tree and on an earlier commit, alternately, in one run: "did this change regress?".

    python benchmarks/against_commit.py --base c03eb3c --repeats 3 -- benchmarks/env_overhead.py --steps 20000

The base commit is checked out with ``git worktree`` and installed (no deps, not editable) into a folder of its
own under ``~/.cache/aligngym/bench-trees/``; its runs get that folder first on ``PYTHONPATH``, so they import
the old code while the benchmark script itself comes from this tree (the scripts must take the same flags on
both). Runs alternate base, current, base, current… so load on the machine hits both alike; each run's output
is printed under its label, with its wall time. ``--quick`` makes one run of each tree and passes ``--quick``
to the benchmark (a smoke run of the harness: the figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "aligngym" / "bench-trees"


def base_site(commit: str) -> Path:
    """A folder holding an install of ``commit`` (built once, then reused)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    site = CACHE / f"{sha[:12]}-site"
    if (site / "aligngym").is_dir():
        return site
    tree = CACHE / f"{sha[:12]}-tree"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)  # a tree deleted by hand
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(tree)],
        check=True,
    )
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (e.g. HEAD~3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tree (alternating)")
    parser.add_argument("--quick", action="store_true", help="one run each, the benchmark with --quick")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- BENCHMARK.py [its flags]")
    args = parser.parse_args()
    script = [a for a in args.script if a != "--"]
    if args.quick:
        args.repeats = 1
        script += [] if "--quick" in script else ["--quick"]
    if not script:
        parser.error("name the benchmark after --, e.g. -- benchmarks/env_overhead.py")
    script[0] = str(
        Path(script[0]).resolve()
    )  # runs start in /tmp, where no source folder shadows the install
    site = base_site(args.base)
    trees = {f"base {args.base}": {"PYTHONPATH": str(site)}, "current": {}}
    for repeat in range(args.repeats):
        for label, extra in trees.items():
            env = {**os.environ, **extra}
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, *script], cwd="/tmp", env=env, capture_output=True, text=True
            )
            wall = time.perf_counter() - start
            print(f"===== {label} (run {repeat + 1}, {wall:.1f} s, exit {result.returncode}) =====")
            print(result.stdout.rstrip())
            if result.returncode:
                print(result.stderr[-3000:])


if __name__ == "__main__":
    main()
