"""Training metrics as JSONL (one object per logging step) and the reward curve as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "reward_curve.png"


def seat_key(seat: str) -> str:
    """The metrics key of one seat's mean reward (self-play on a multi-agent env)."""
    return f"seat/{seat}/reward"


class MetricsCallback(TrainerCallback):
    """Appends each logging step of the trainer to ``OUTPUT_DIR/metrics.jsonl`` (``step`` plus TRL's logs)."""

    def __init__(self, output_dir: str | Path, append: bool = False):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("")

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run restarts at its checkpoint's step: later rows of the interrupted run are replaced.
        if state.global_step and self.path.exists():
            rows = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= state.global_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return  # under `accelerate launch` every process logs the same (already reduced) values
        if not logs or "train_runtime" in logs:
            return  # the end-of-training summary is not a step
        row = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The rows of ``OUTPUT_DIR/metrics.jsonl``."""
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quarter_means(rows: list[dict], key: str = "reward") -> tuple[float, float]:
    """Mean of ``key`` over the first and the last quarter of the logged steps."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if len(values) < 4:
        raise ValueError(f"need at least 4 logged steps to compare quarters, got {len(values)}")
    q = len(values) // 4
    return sum(values[:q]) / q, sum(values[-q:]) / q


def plot_reward_curve(output_dir: str | Path, title: str = "") -> Path | None:
    """Draw reward (and its components) against step into ``OUTPUT_DIR/reward_curve.png``, if rewards were logged."""
    rows = [r for r in read_metrics(output_dir) if r.get("reward") is not None]
    if not rows:
        return None
    series = {"reward": [r["reward"] for r in rows]}
    for key in sorted(rows[0]):
        if key.startswith("rewards/") and key.endswith("/mean") and key != "rewards/env/mean":
            series[key[8:-5]] = [r.get(key) for r in rows]
        elif key.startswith("seat/") and key.endswith("/reward"):
            series[f"seat {key[5:-7]}"] = [r.get(key) for r in rows]
    return _plot(
        output_dir,
        CURVE_FILE,
        [r["step"] for r in rows],
        series,
        "mean reward",
        title or "reward during training",
    )


def plot_metric(output_dir: str | Path, key: str, filename: str, title: str = "") -> Path | None:
    """Draw one logged metric (loss, margins, ...) against step; None when it was never logged."""
    rows = [r for r in read_metrics(output_dir) if r.get(key) is not None]
    if not rows:
        return None
    return _plot(
        output_dir, filename, [r["step"] for r in rows], {key: [r[key] for r in rows]}, key, title or key
    )


def _plot(output_dir, filename, steps, series: dict[str, list], ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, values) in enumerate(series.items()):
        ax.plot(steps, values, label=label, linewidth=2 if i == 0 else 1, alpha=1 if i == 0 else 0.6)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(output_dir) / filename
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
