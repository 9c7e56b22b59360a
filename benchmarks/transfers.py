"""Moving files and stdin into and out of sandboxes: local against docker (lane and attach stream).

Usage: ``python benchmarks/transfers.py --repeats 3``. For each backend, in one run, prints the median
(min–max) seconds of the transfers issue 12 names: ``write_files`` of 8 x 40 MiB and of 20 x 15 MiB, a run
fed 100 MiB of stdin, and ``read_bytes`` of a 40 MiB file, with each docker figure's ratio to local.
"docker (attach)" is the docker backend with its lane turned off (``ALIGNGYM_DOCKER_LANE=0``): every byte
through the daemon's attach stream, as before the lane, and as a daemon on another machine still does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from aligngym.sandboxes import DockerPool, DockerSandbox, Sandbox, SandboxConfig, make_sandbox

MIB = 1 << 20
CONFIG = {"timeout": 60, "memory_mb": 2048, "max_file_mb": 64}
STDIN_CODE = "import sys\nprint(len(sys.stdin.buffer.read()))"


def cases() -> dict[str, Callable[[Sandbox], None]]:
    """Name -> one transfer on a sandbox (each checks that every byte arrived)."""
    big = {f"big{i}.bin": bytes([i]) * (40 * MIB) for i in range(8)}
    mid = {f"mid{i}.bin": bytes([i]) * (15 * MIB) for i in range(20)}
    stdin = b"z" * (100 * MIB)

    def read(sandbox: Sandbox) -> None:
        assert len(sandbox.read_bytes("big0.bin")) == 40 * MIB

    def feed(sandbox: Sandbox) -> None:
        result = sandbox.run(STDIN_CODE, stdin=stdin)
        assert result.stdout == f"{len(stdin)}\n", result

    return {
        "write 8 x 40 MiB": lambda sandbox: sandbox.write_files(big),
        "write 20 x 15 MiB": lambda sandbox: sandbox.write_files(mid),
        "stdin 100 MiB": feed,
        "read 40 MiB": read,
    }


def measure(make: Callable[[], Sandbox], repeats: int) -> dict[str, list[float]]:
    """Seconds per case, ``repeats`` times, each repeat in a fresh sandbox (so writes allocate afresh)."""
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        with make() as sandbox:
            sandbox.run("pass")  # started and warm before the clock runs
            for name, case in cases().items():
                start = time.perf_counter()
                case(sandbox)
                samples.setdefault(name, []).append(time.perf_counter() - start)
    return samples


def docker_attach(pool: DockerPool) -> Sandbox:
    os.environ["ALIGNGYM_DOCKER_LANE"] = "0"
    try:
        return DockerSandbox(SandboxConfig(**CONFIG), pool=pool)
    finally:
        del os.environ["ALIGNGYM_DOCKER_LANE"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh sandboxes per backend (default 3)")
    parser.add_argument("--no-docker", action="store_true", help="local only")
    args = parser.parse_args()
    rows = {"local": measure(lambda: make_sandbox("local", **CONFIG), args.repeats)}
    if not args.no_docker:
        pool = DockerPool(size=0)  # no spares: each sandbox is started with the lane setting of its row
        rows["docker (lane)"] = measure(
            lambda: DockerSandbox(SandboxConfig(**CONFIG), pool=pool), args.repeats
        )
        rows["docker (attach)"] = measure(lambda: docker_attach(pool), args.repeats)
        pool.shutdown()
    table = Table(title=f"transfers: median (min-max) seconds over {args.repeats} fresh sandboxes")
    table.add_column("backend")
    for name in cases():
        table.add_column(name, justify="right")
    local = {name: statistics.median(values) for name, values in rows["local"].items()}
    for backend, samples in rows.items():
        cells = []
        for name, values in samples.items():
            median = statistics.median(values)
            ratio = "" if backend == "local" else f" = {median / local[name]:.1f}x"
            cells.append(f"{median:.2f} ({min(values):.2f}-{max(values):.2f}){ratio}")
        table.add_row(backend, *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
