"""What ``aligngym train`` shows: a progress bar in place of TRL's printed dicts, and the run's summary.

The full dict of every logging step still goes to ``metrics.jsonl`` (``logging.MetricsCallback``); the bar
shows the figures that say whether training works: mean reward and its components (online methods), each
seat's reward (self-play), or the loss and the method's own accuracy (offline methods).
"""

from __future__ import annotations

import contextvars
import json
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from aligngym.console import Bar, format_number

#: Whether training prints TRL's whole dict at each logging step too (``aligngym train --verbose``).
VERBOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("aligngym_train_verbose", default=False)
#: TRL/transformers callbacks that print progress or dicts; ``TrainConsole`` takes their place.
_PRINTERS = ("PrinterCallback", "ProgressCallback", "NotebookProgressCallback")
#: Offline methods' logged figures worth a place on the bar: TRL key -> label.
_OFFLINE_FIGURES = {
    "loss": "loss",
    "rewards/accuracies": "pair acc",  # dpo
    "rewards/margins": "margin",  # dpo
    "accuracy": "pair acc",  # reward model
    "margin": "margin",  # reward model
    "mean_token_accuracy": "token acc",  # sft
}
_COMPONENT = re.compile(r"rewards/(.+)/mean")
_SEAT = re.compile(r"seat/(.+)/reward")


def step_figures(logs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``Bar.update`` for one logging step: reward, components, other figures."""
    figures: dict[str, Any] = {}
    if logs.get("reward") is not None:
        components = {}
        for key, value in logs.items():
            match = _COMPONENT.fullmatch(key)
            if match and match[1] != "env":  # "env" is the scalar reward itself
                components[match[1]] = value
        seats = {m[1]: v for k, v in logs.items() if (m := _SEAT.fullmatch(k))}
        return {"reward": logs["reward"], "components": components, **seats}
    for key, label in _OFFLINE_FIGURES.items():
        if logs.get(key) is not None:
            figures.setdefault(label, logs[key])
    if "pair acc" in figures:
        figures.pop("token acc", None)  # DPO logs it too, but its pairs' accuracy is the one that matters
    return figures


class TrainConsole(TrainerCallback):
    """A ``Bar`` over the optimizer steps, moved every step and refreshed with each logging step's figures."""

    def __init__(self, label: str, verbose: bool = False, console=None):
        self.label = label
        self.verbose = verbose
        self.console = console
        self.bar: Bar | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = Bar(self.label, state.max_steps, "steps", console=self.console).start()
            self.bar.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None and not control.should_log:  # a logging step moves the bar in on_log
            self.bar.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if self.verbose:
            self.bar.log(str({k: v for k, v in logs.items() if k != "total_flos"}))
        if "train_runtime" not in logs:  # the end-of-training summary is not a step
            self.bar.update(state.global_step, **step_figures(logs))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def install_console(trainer, label: str) -> None:
    """Replace the trainer's printing callbacks with a ``TrainConsole`` (verbose as ``VERBOSE`` says)."""
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ in _PRINTERS:
            trainer.remove_callback(callback)
    trainer.add_callback(TrainConsole(label, verbose=VERBOSE.get()))


def final_figures(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Where training ended, from the logged steps: the reward (or loss) of the last quarter, else last step."""
    key = next((k for k in ("reward", "loss") if any(r.get(k) is not None for r in rows)), None)
    if key is None:
        return []
    logged = [r for r in rows if r.get(key) is not None]
    if len(logged) >= 4:
        q = len(logged) // 4
        last, first = logged[-q:], logged[:q]
        where = f"mean of the last quarter, steps {last[0]['step']}-{last[-1]['step']}"
        where += f"; first quarter {format_number(_mean(first, key))}"
    else:
        last = logged[-1:]
        where = f"the last logged step, {last[0]['step']}"
    figures = [(f"final {key}", f"{format_number(_mean(last, key))}  ({where})")]
    means = {k: _mean(last, k) for k in last[-1] if k != "step"}
    parts = step_figures({k: v for k, v in means.items() if v is not None})
    components = parts.pop("components", {})
    others = {k: v for k, v in parts.items() if k not in (key, "reward")}
    if components:
        figures.append(("  components", _join(components)))
    if others:
        figures.append(("  per seat" if key == "reward" else "  and", _join(others)))
    return figures


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
    return sum(values) / len(values) if values else None


def _join(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {format_number(v)}" for k, v in figures.items())


def round_figures(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``iterate``: the mean reward of each round's rollout, first to last."""
    rewards = [format_number(r["reward"]) for r in rows if r.get("round") is not None]
    return [("reward per round", " -> ".join(rewards))] if rewards else []


def held_out_figures(path: str | Path) -> list[tuple[str, str]]:
    """The greedy score before and after training, from the held-out file at ``path`` when it was written."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        before, after = data.get("before") or {}, data["after"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [("greedy score", f"unreadable {path.name}")]
    episodes = after.get("episodes")
    on = f" on {episodes} held-out episodes" if episodes else ""

    def change(key: str, fmt) -> str:
        now = fmt(after[key])
        return f"{fmt(before[key])} -> {now}" if before.get(key) is not None else now

    if after.get("accuracy") is not None:
        reward = (
            f" (mean reward {change('mean_reward', format_number)})"
            if after.get("mean_reward") is not None
            else ""
        )
        return [("greedy accuracy", f"{change('accuracy', _percent)}{on}{reward}")]
    if after.get("mean_reward") is not None:
        return [("greedy mean reward", f"{change('mean_reward', format_number)}{on}")]
    return []


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


#: What each file a training run can write is, as the summary names it.
_DESCRIPTIONS = {
    "metrics.jsonl": "every logged step, TRL's full dict (one JSON object per line)",
    "reward_curve.png": "mean reward and its components against step",
    "loss_curve.png": "training loss against step",
    "margin_curve.png": "DPO implicit reward margin against step",
    "accuracy_curve.png": "reward model pair accuracy against step",
    "failed_episodes.jsonl": "episodes whose env failed (trained on nothing)",
    "held_out.json": "greedy score on held-out episodes, before and after training",
}


def describe(name: str, iterate: bool = False) -> str:
    """What the file or folder ``name`` of an output dir holds, in a few words."""
    if iterate and name in ("metrics.jsonl", "reward_curve.png"):
        return "mean reward of each round's rollout" + (" against round" if name.endswith(".png") else "")
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    if name == "model":
        return "the trained model and tokenizer (use it as model: or --model)"
    if re.fullmatch(r"checkpoint-\d+", name):
        return "a checkpoint (resume: true continues from the last)"
    if re.fullmatch(r"round\d+", name):
        return "that round's rollouts (trajectories.jsonl) and training metrics"
    return ""


def written(output_dir: str | Path, since: float | None = None) -> list[str]:
    """The names of what a run left in ``output_dir``: metrics, plots, other files, folders, the model.

    With ``since`` (a ``time.time()``), only what was written at or after it: a reused output dir's files
    from an earlier run are not announced as this run's.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return []
    entries = [p for p in out.iterdir() if since is None or _last_written(p) >= since]
    files = sorted(p.name for p in entries if p.is_file())
    folders = sorted(p.name for p in entries if p.is_dir() and p.name != "model")
    first = [n for n in ("metrics.jsonl",) if n in files]
    plots = [n for n in files if n.endswith(".png")]
    others = [n for n in files if n not in first and n not in plots]
    model = ["model"] if any(p.name == "model" and p.is_dir() for p in entries) else []
    return first + plots + others + folders + model


def _last_written(path: Path) -> float:
    """The newest modification time of ``path`` or anything under it."""
    if not path.is_dir():
        return path.stat().st_mtime
    return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))])
