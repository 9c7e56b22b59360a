"""What ``aligngym eval`` writes: ``results.json`` (everything), ``results.md`` (a table, models side by side),
``results.png`` (mean reward with its interval, and pass@k curves) and a short table on the console."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .eval_stats import CONFIDENCE
from .evaluate import CellResult

#: How every figure was computed, as results.json and results.md say it.
METHOD = {
    "mean_reward": "mean over tasks of each task's mean reward (errored samples left out)",
    "ci95": f"{CONFIDENCE:.0%} Student t interval over the per-task mean rewards (null with < 2 tasks)",
    "pass_at_k": "unbiased pass@k of Chen et al. 2021, 1 - C(n-c,k)/C(n,k), averaged over tasks",
    "pass_hat_k": "unbiased pass^k (all k succeed), C(c,k)/C(n,k), averaged over tasks",
    "errors": "samples whose episode failed with an error; they count as failures in pass@k and pass^k",
}
FILES = {
    "results.json": "every figure, per task too",
    "results.md": "the table, models side by side",
    "results.png": "chart: mean reward (95% CI) and pass@k",
}


def write_reports(
    results: list[CellResult], out_dir: str | Path, settings: dict[str, Any]
) -> dict[str, Path]:
    """Write results.json, results.md and results.png into ``out_dir``; name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    document = {"settings": settings, "method": METHOD, "results": [_jsonable_cell(c) for c in results]}
    paths["results.json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    paths["results.md"].write_text(markdown(results, settings))
    plot(results, paths["results.png"])
    return paths


def _jsonable_cell(result: CellResult) -> dict[str, Any]:
    row = asdict(result)
    for key in ("pass_at_k", "pass_hat_k"):
        if row[key] is not None:
            row[key] = {str(k): v for k, v in row[key].items()}
    row["ci95"] = list(row["ci95"]) if row["ci95"] is not None else None
    return row


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(result: CellResult) -> str:
    return "n/a" if result.ci95 is None else f"[{result.ci95[0]:.3f}, {result.ci95[1]:.3f}]"


def figures(result: CellResult, undefined: str = "not defined") -> dict[str, str]:
    """The table's figures of one env x model, as text (the console and results.md show the same)."""
    k = result.samples
    passes, hats = result.pass_at_k, result.pass_hat_k
    ks = dict.fromkeys((1, k))  # pass@1 and pass@K (once when K is 1)
    return {
        "mean reward": _number(result.mean_reward),
        "95% CI": _interval(result),
        **{f"pass@{j}": undefined if passes is None else _number(passes.get(j)) for j in ks},
        f"pass^{k}": undefined if hats is None else _number(hats.get(k)),
        "errors": f"{result.errors}/{sum(t.samples for t in result.tasks)}",
    }


def markdown(results: list[CellResult], settings: dict[str, Any]) -> str:
    """results.md: per env, one row per figure and one column per model."""
    models = list(dict.fromkeys(r.model for r in results))
    lines = ["# aligngym eval", ""]
    lines.append(", ".join(f"{k}: {_setting(v)}" for k, v in settings.items() if v not in (None, {}, [])))
    for env_id in dict.fromkeys(r.env_id for r in results):
        cells = {r.model: r for r in results if r.env_id == env_id}
        first = next(iter(cells.values()))
        lines += ["", f"## {env_id}", "", f"success: {first.success or 'not defined'}", ""]
        lines.append("| | " + " | ".join(models) + " |")
        lines.append("|---|" + "---|" * len(models))
        for name in figures(first):
            lines.append(f"| {name} | " + " | ".join(figures(cells[m])[name] for m in models) + " |")
        lines += [f"\n{first.note}" if first.note else ""]
    lines += ["", "## Method", ""] + [f"- {k}: {v}" for k, v in METHOD.items()] + [""]
    return "\n".join(lines)


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def plot(results: list[CellResult], path: str | Path) -> None:
    """results.png: mean reward with its interval per env (models side by side), and pass@k against k."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in results))
    envs = list(dict.fromkeys(r.env_id for r in results))
    curves = [r for r in results if r.pass_at_k]
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 7, 4.5), squeeze=False)
    bars = axes[0][0]
    width = 0.8 / len(models)
    for m, model in enumerate(models):
        cells = {r.env_id: r for r in results if r.model == model}
        xs = [e + (m - (len(models) - 1) / 2) * width for e in range(len(envs))]
        means = [cells[e].mean_reward or 0.0 for e in envs]
        errs = [_half_widths(cells[e]) for e in envs]
        bars.bar(xs, means, width, yerr=list(zip(*errs, strict=True)), capsize=3, label=model)
    bars.set_xticks(range(len(envs)), [e.split("/")[-1] for e in envs], rotation=20)
    bars.set_ylabel("mean reward (95% CI)")
    bars.legend()
    if curves:
        ax = axes[0][1]
        for r in curves:
            ks = sorted(r.pass_at_k)
            ax.plot(
                ks, [r.pass_at_k[k] for k in ks], marker="o", label=f"{r.env_id.split('/')[-1]} {r.model}"
            )
        ax.set_xticks(sorted({k for r in curves for k in r.pass_at_k}))
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _half_widths(result: CellResult) -> tuple[float, float]:
    if result.ci95 is None or result.mean_reward is None:
        return (0.0, 0.0)
    return (result.mean_reward - result.ci95[0], result.ci95[1] - result.mean_reward)


def console_table(results: list[CellResult]) -> str:
    """A plain table for the console, one row per env x model (columns aligned, never wrapped)."""
    if not results:
        return ""
    head = ["env", "model", *figures(results[0])]
    body = [[r.env_id, r.model, *figures(r, undefined="-").values()] for r in results]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: list[str]) -> str:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(head), *(line(row) for row in body)])
