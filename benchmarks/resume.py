"""Resume of a long rollout: wall time and peak memory of finding the finished episodes, old code against new.

    python benchmarks/resume.py                       # 40k and 1M rows, clean and torn, 3 repeats
    python benchmarks/resume.py --rows 40000 --repeats 5 --base HEAD~2

Writes files of realistic rows (tool-use chats of 1 to 4 tool calls, 1.3-2.3 KB a row, as ``aligngym rollout``
writes them) under ``--dir``, once. For each size and file state (``clean``; ``torn``: a kill -9 cut the last
line mid-write) it times, each run in a fresh subprocess and alternating old and new so that load on the
machine hits both alike, what ``aligngym rollout --resume`` does before its first episode: the CLI's
``check_resumable``, then ``TrajectoryWriter(resume=True)``. It prints the wall time (median and min-max) and
the peak RSS (``ru_maxrss``) of each, next to the peak RSS of a rollout process of its own (``--run-episodes``
Arithmetic episodes, scripted agent): what a run costs anyway.

"old" is ``aligngym/trajectory.py`` and ``aligngym/rows.py`` of ``--base`` (default: the commit before this
script was added, i.e. before streaming resume), read with ``git show`` into a temporary package. Each child
runs under an address-space limit (``--old-limit-gb``) so an old run that would need more memory fails alone;
old code is not run on files over ``--old-max-rows`` (at 1M rows it needs more than 12 GiB).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "aligngym/ToolUse-v0"
#: Values no real row has, replaced row by row: (marker, field it stands for).
MARKS = {"-7777777771": "episode", "-7777777772": "seed", "EPISODE-ID-MARK": "episode_id"}
SYSTEM = (
    "You answer questions by calling tools. Tools: search(query) finds documents, lookup(title) reads one, "
    "sql(query) runs SQLite on the world database, calculator(expression) evaluates arithmetic, python(code) "
    "runs a short program. Call a tool with a tool call; when you know the answer, reply with it alone."
)


def _template(k: int) -> list[str]:
    """Row shape ``k`` as JSON text split around the markers (odd items are marker names)."""
    from aligngym.trajectory import Trajectory

    rng = random.Random(k)
    turns = 1 + k % 4
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is the population of city #{rng.randrange(999)} times {turns}?"},
    ]
    for t in range(turns):
        call_id = f"call_{k}_{t}"
        arguments = json.dumps({"query": f"SELECT population FROM city WHERE id = {rng.randrange(999)}"})
        call = {"id": call_id, "type": "function", "function": {"name": "sql", "arguments": arguments}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        result = json.dumps([{"population": rng.randrange(10**6), "note": 'é "quoted" \\ ' * 3}])
        messages.append({"role": "tool", "tool_call_id": call_id, "name": "sql", "content": result})
    messages.append({"role": "assistant", "content": f"The answer is {rng.randrange(10**7)}."})
    traj = Trajectory(
        env_id=ENV_ID,
        episode=int(next(m for m, f in MARKS.items() if f == "episode")),
        seed=int(next(m for m, f in MARKS.items() if f == "seed")),
        messages=messages,
        rewards=[0.0] * turns + [1.0],
        reward=1.0,
        terminated=True,
        info={"task_id": f"t{k}", "tool_calls": turns, "tool_errors": 0},
        reward_components={"answer": 1.0, "tool_errors": 0.0},
        turns=turns + 1,
        agent="gpt-4o-mini",
        episode_id="EPISODE-ID-MARK",
        duration_s=1.25,
        success=True,
        env_package="aligngym",
        env_package_version="0.1.0",
        aligngym_version="0.1.0",
    )
    line = traj.to_json().replace('"prompt_index": -7777777771', '"prompt_index": EPISODE-MARK')
    return re.split("(" + "|".join(map(re.escape, [*MARKS, "EPISODE-MARK"])) + ")", line)


def write_rows(path: Path, rows: int) -> None:
    """``rows`` rows of episodes 0.. of one run (seed 0), one of 16 shapes each."""
    shapes = [_template(k) for k in range(16)]
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as fh:
        for start in range(0, rows, 10_000):
            chunk = []
            for i in range(start, min(rows, start + 10_000)):
                values = {"episode": str(i), "seed": str(i), "episode_id": f"{i:032x}"}
                parts = shapes[i % 16]
                chunk.append(
                    "".join(p if j % 2 == 0 else values[MARKS.get(p, "episode")] for j, p in enumerate(parts))
                )
            fh.write("\n".join(chunk) + "\n")
    tmp.replace(path)


def base_package(base: str, into: Path) -> Path:
    """A package ``aligngym_base`` under ``into`` holding ``base``'s trajectory and row code."""
    package = into / "aligngym_base"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("trajectory.py", "rows.py"):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{base}:aligngym/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / name).write_text(source)
    return into


def default_base() -> str:
    """The commit before the one that added this script (HEAD while it is not committed)."""
    added = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "benchmarks/resume.py"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return f"{added[-1]}~1" if added else "HEAD"


def child(code: str, path: str, base_dir: str) -> None:
    """In a fresh process: resume ``path`` as ``aligngym rollout --resume`` does and print the figures."""
    import resource

    import aligngym  # noqa: F401  (what every run imports, so old and new start from the same RSS)

    if code == "old":
        sys.path.insert(0, base_dir)
        from aligngym_base import trajectory
    else:
        from aligngym import trajectory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run = trajectory.RunKey(ENV_ID, 0, {}, 1)
    start = time.perf_counter()
    trajectory.check_resumable(path, run)
    checked = time.perf_counter()
    writer = trajectory.TrajectoryWriter(path, resume=True, run=run)
    done = len(writer.done)
    writer.close()
    end = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"check_s": checked - start, "writer_s": end - checked, "done": done, "before_mb": before}
    print(json.dumps({**figures, "peak_mb": peak}))


def run_child() -> None:
    """In a fresh process: a rollout of ``N`` episodes to ``PATH``; prints its peak RSS (MiB)."""
    import asyncio
    import resource

    import aligngym
    from aligngym.agents.scripted import ScriptedAgent

    episodes, out = int(sys.argv[2]), sys.argv[3]
    agent = ScriptedAgent(["4"])
    asyncio.run(aligngym.rollout("aligngym/Arithmetic-v0", agent, episodes=episodes, out=out, progress=False))
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def spawn(args: list[str], limit_gb: float, timeout: float) -> dict | str:
    """Run this script as a child (cwd /tmp, so the installed tree is imported); its JSON, or why none."""
    import resource

    def limit() -> None:
        cap = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            cwd="/tmp",
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    if result.returncode:
        tail = result.stderr.strip().splitlines()[-1:] or ["?"]
        return "out of memory" if "MemoryError" in tail[0] else f"failed: {tail[0][:80]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def tear(path: Path, clean_size: int, torn: bytes) -> None:
    """Put the file back in its state before a run: its clean rows, then ``torn`` (a cut last line)."""
    with path.open("r+b") as fh:
        fh.truncate(clean_size)
        fh.seek(clean_size)
        fh.write(torn)


def fmt(values: list[float], unit: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f}{unit} ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else f"{med:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[40_000, 1_000_000])
    parser.add_argument("--states", nargs="+", default=["clean", "torn"], choices=["clean", "torn"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of new code per case (old: see below)")
    parser.add_argument("--old-repeats-over", type=int, default=200_000, help="files of more rows: old once")
    parser.add_argument("--base", default=None, help="old code's commit (default: before streaming resume)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "aligngym-resume-bench")
    parser.add_argument("--old-max-rows", type=int, default=200_000, help="larger files: new code only")
    parser.add_argument("--old-limit-gb", type=float, default=12.0, help="address-space cap of each child")
    parser.add_argument("--timeout", type=float, default=900.0, help="per child run, seconds")
    parser.add_argument("--run-episodes", type=int, default=5000)
    args = parser.parse_args()
    base = args.base or default_base()
    args.dir.mkdir(parents=True, exist_ok=True)
    base_dir = str(base_package(base, Path(tempfile.mkdtemp(prefix="resume-base-"))))
    own = spawn(
        ["--run", str(args.run_episodes), str(args.dir / "run.jsonl")], args.old_limit_gb, args.timeout
    )
    print(
        f"old = {base} ({subprocess.getoutput(f'git -C {ROOT} rev-parse --short {base}')}), new = this tree"
    )
    print(f"a run's own peak RSS (rollout of {args.run_episodes} Arithmetic episodes): {own}")
    head = f"{'rows':>9} {'file':>8} {'state':>5} {'code':>4} {'resume wall s':>22} "
    print(head + f"{'of it: check':>13} {'peak RSS MiB':>14} {'RSS at start':>12} {'done':>9}")
    for rows in args.rows:
        path = args.dir / f"rows-{rows}-v1.jsonl"
        if not path.exists():
            write_rows(path, rows)
        clean = path.stat().st_size
        last = path.read_bytes()[-4000:].splitlines()[-1]
        for state in args.states:
            torn = last[: len(last) // 2] if state == "torn" else b""
            results: dict[str, list[dict]] = {"old": [], "new": []}
            failures: dict[str, str] = {}
            for repeat in range(args.repeats):
                for code in ("old", "new") if repeat % 2 == 0 else ("new", "old"):
                    if code == "old" and rows > args.old_max_rows:
                        failures[code] = f"not run (over --old-max-rows {args.old_max_rows:,})"
                    if code == "old" and (
                        code in failures or (rows > args.old_repeats_over and results["old"])
                    ):
                        continue
                    tear(path, clean, torn)
                    got = spawn(["--child", code, str(path), base_dir], args.old_limit_gb, args.timeout)
                    if isinstance(got, str):
                        failures[code] = got
                        continue
                    results[code].append(got)
                    if path.stat().st_size != clean:  # resume keeps every complete row as it was
                        failures[code] = f"left the file at {path.stat().st_size} bytes, not {clean}"
            tear(path, clean, b"")
            for code in ("old", "new"):
                runs = results[code]
                wall = [r["check_s"] + r["writer_s"] for r in runs]
                line = f"{rows:>9,} {clean / 2**20:>6.0f}MB {state:>5} {code:>4} {fmt(wall, ' s'):>22} "
                if not runs:
                    print(line + f"{failures.get(code, '-')}")
                    continue
                check = fmt([r["check_s"] for r in runs], "")
                peak = fmt([r["peak_mb"] for r in runs], "")
                print(line + f"{check:>13} {peak:>14} {runs[0]['before_mb']:>12.0f} {runs[0]['done']:>9,}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--run"]:
        run_child()
    else:
        main()
