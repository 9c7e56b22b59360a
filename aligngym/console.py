"""What every command prints: a progress bar led by the figure that matters, an end-of-run summary, and
the known noise of the ML libraries kept out of the way.

``train``, ``rollout`` and ``eval`` share it, so they look alike::

    with Bar("grpo", total=600, unit="steps") as bar:
        bar.update(completed=10, reward=0.41, components={"correct": 0.22, "format": 1.0})
    print_summary("grpo on aligngym/Arithmetic-v0", [("final reward", "0.720")], "runs/q", [("model", "...")])
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

#: Figures shown on a bar: name -> value (None: not known yet, left out).
Figures = Mapping[str, float | int | None]

#: A bar printed to a non-terminal (a log file, CI) prints a plain line each time it passes a tenth of its total,
PLAIN_LINES = 10
#: ... at most one per this many seconds (a short run prints its final line only).
PLAIN_INTERVAL_S = 5.0

#: Library warnings that tell the user nothing they can act on: (category, message regex). Hidden.
KNOWN_NOISE: tuple[tuple[type[Warning], str], ...] = (
    # TRL 1.x still calls transformers' pre-v5 names (renamed to activation_checkpointing in transformers 5).
    (FutureWarning, r"`\w*gradient_checkpointing\w*` is deprecated"),
)
#: Libraries whose other warnings are shown once each (by message), on one line, not with their source line.
LIBRARIES = ("transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "torch")
#: Environment switches that silence the libraries' own progress bars and notices (set before they import).
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights", "Writing model shards"
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter bars ("Tokenizing train dataset")
    "TRL_EXPERIMENTAL_SILENCE": "1",  # "You are using 'rollout_func', which is an experimental feature"
}


def _console(console=None):
    from rich.console import Console

    return console or Console(highlight=False, soft_wrap=True)


def format_number(value: float | int) -> str:
    """A figure as it reads on a status line: counts as they are, others with 3 decimals."""
    if isinstance(value, int):  # bool too
        return str(int(value))
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def format_figures(
    reward: float | None = None, components: Figures | None = None, figures: Figures | None = None
) -> str:
    """``reward 0.410 (correct 0.220, format 1.000)  loss 0.020``: reward first, unknown values left out."""
    parts = []
    if reward is not None:
        text = f"reward {format_number(reward)}"
        known = {k: v for k, v in (components or {}).items() if v is not None}
        if known:
            text += " (" + ", ".join(f"{k} {format_number(v)}" for k, v in known.items()) + ")"
        parts.append(text)
    parts += [f"{k} {format_number(v)}" for k, v in (figures or {}).items() if v is not None]
    return "  ".join(parts)


def format_duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Bar:
    """A progress bar: count out of total, the figures that matter (mean reward first), elapsed time, ETA.

    On a terminal it redraws in place (rich). Elsewhere (a log file, CI, a test) it prints a plain line each
    tenth of the way (at most one per ``interval_s``) and at the end, so a captured log still shows how the
    run went.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "steps",
        console=None,
        interval_s: float = PLAIN_INTERVAL_S,
    ):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.console = _console(console)
        self.interval_s = interval_s
        self._printed_at = 0.0
        self.completed = 0
        self.status = ""
        self._start: float | None = None
        self._printed_tenth = 0  # plain mode: the last tenth of the total a line was printed for
        self._progress = None
        self._task = None

    @property
    def live(self) -> bool:
        """Whether the bar redraws in place (a terminal) rather than printing plain lines."""
        return self.console.is_terminal and not self.console.is_dumb_terminal

    def start(self) -> Bar:
        """Show the bar (the clock of its ETA starts here)."""
        self._start = self._printed_at = time.monotonic()
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(self.label, total=self.total, status="")
            self._progress.start()
        return self

    def update(
        self,
        completed: int | None = None,
        *,
        advance: int = 0,
        reward: float | None = None,
        components: Figures | None = None,
        **figures: float | int | None,
    ) -> None:
        """Move to ``completed`` (or by ``advance``) and show the given figures (the previous ones otherwise)."""
        if self._start is None:
            self.start()
        self.completed = completed if completed is not None else self.completed + advance
        if reward is not None or components or figures:
            self.status = format_figures(reward, components, figures)
        if self._progress is not None:
            self._progress.update(self._task, completed=self.completed, status=self.status)
            return
        tenth = self.completed * PLAIN_LINES // self.total if self.total else PLAIN_LINES
        due = time.monotonic() - self._printed_at >= self.interval_s
        if tenth > self._printed_tenth and self.completed < self.total and due:
            self._printed_tenth = tenth
            self._print_plain()

    def log(self, text: str) -> None:
        """Print a line above the bar (it keeps its place at the bottom)."""
        self.console.print(text, markup=False)

    def stop(self) -> None:
        """Leave the final state on screen."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self._start is not None:
            self._print_plain()
        self._start = None

    def _print_plain(self) -> None:
        self._printed_at = time.monotonic()
        elapsed = self._printed_at - (self._start or self._printed_at)
        line = f"{self.label} {self.completed}/{self.total} {self.unit}"
        if self.status:
            line += f"  {self.status}"
        line += f"  {format_duration(elapsed)}"
        if 0 < self.completed < self.total:
            line += f" ETA {format_duration(elapsed / self.completed * (self.total - self.completed))}"
        self.console.print(line, markup=False)

    def __enter__(self) -> Bar:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def print_summary(
    title: str,
    figures: Sequence[tuple[str, str]],
    where: str | os.PathLike | None = None,
    files: Sequence[tuple[str, str]] = (),
    console=None,
) -> None:
    """The end of a run: a title, its key figures (name, text) and every file it wrote (name, what it is).

    ``files`` are named relative to ``where``; with no file, the summary says nothing was written.
    """
    from rich.text import Text

    out = _console(console)
    out.print(Text(title, style="bold"))
    width = max((len(name) for name, _ in figures), default=0)
    for name, text in figures:
        out.print(f"  {name:<{width}}  {text}", markup=False)
    if where is None:
        return
    if not files:
        out.print(f"nothing written to {where}", markup=False)
        return
    out.print(f"written to {where}:", markup=False)
    width = max(len(name) for name, _ in files)
    for name, what in files:
        out.print(f"  {name:<{width}}  {what}".rstrip(), markup=False)


def quiet_libraries(verbose: bool = False) -> None:
    """Keep the libraries' known noise off the console; ``verbose`` leaves everything as they print it.

    Their loading/saving progress bars and experimental notices are switched off, the warnings in
    ``KNOWN_NOISE`` hidden, and any other warning from ``LIBRARIES`` shown once, on one line.
    """
    if verbose:
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    _quiet_imported_bars()
    for library in LIBRARIES:
        warnings.filterwarnings("once", module=rf"{library}(\.|$)")
    for category, pattern in KNOWN_NOISE:  # added last, so checked first
        warnings.filterwarnings("ignore", message=pattern, category=category)
    if not getattr(warnings.showwarning, "_aligngym_compact", False):
        warnings.showwarning = _compact_showwarning(warnings.showwarning)


def _quiet_imported_bars() -> None:
    """The environment switches only act at import: switch off the bars of libraries already imported."""
    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        from datasets.utils import disable_progress_bars as disable_datasets_bars

        disable_datasets_bars()


def library_of(filename: str) -> str | None:
    """Which of ``LIBRARIES`` a source file belongs to (from its path), or None."""
    parts = re.split(r"[\\/]", filename)
    return next((lib for lib in LIBRARIES if lib in parts[:-1]), None)


def _compact_showwarning(fallback):
    """``warnings.showwarning`` that writes a library's warning as ``warning (lib): message`` on one line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        library = library_of(filename)
        if library is None:
            fallback(message, category, filename, lineno, file, line)
            return
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        try:
            (file or sys.stderr).write(f"warning ({library}): {text}\n")
        except (OSError, ValueError):
            pass  # a closed stream: a warning must never crash the run

    show._aligngym_compact = True  # type: ignore[attr-defined]
    return show
