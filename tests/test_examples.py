"""Every example config loads, validates, and its `trl:` keys are real fields of the TRL config it feeds;
every CPU example runs end to end as examples/README.md documents it.

The multi-GPU examples cannot run here (no GPU, no hub); the config checks are what keep them from rotting.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aligngym.trainers import load_config

EXAMPLES_DIR = Path(__file__).parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.rglob("*.yaml"))
#: The CPU examples examples/README.md documents, by the name of their section and config.
CPU_EXAMPLES = ("grpo", "rloo", "dpo", "sft", "reward", "iterate", "selfplay")
#: Examples that learn from the README's `data` rollout.
OFFLINE = ("dpo", "sft", "reward")


def test_examples_are_found():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_example_config_is_valid(path, tmp_path):
    data = tmp_path / "trajectories.jsonl"
    data.write_text("")
    config = load_config(path, data=str(data) if "data:" in path.read_text() else None)
    config.validate()
    import trl

    trl_config = {"grpo": trl.GRPOConfig, "rloo": trl.GRPOConfig, "sft": trl.SFTConfig, "dpo": trl.DPOConfig}
    fields = {f.name for f in dataclasses.fields(trl_config.get(config.method, trl.GRPOConfig))}
    assert not set(config.trl) - fields, f"not {config.method} trainer arguments: {set(config.trl) - fields}"
    if config.method in ("grpo", "rloo"):
        from aligngym.trainers.grpo import env_prompt_dataset

        kwargs = dict(config.env_kwargs)
        if "sandbox" in kwargs:
            kwargs["sandbox"] = "local"  # the prompts do not depend on it; a GPU node runs docker
        dataset, _, _ = env_prompt_dataset(config.env, kwargs, config.num_prompts)
        per_step = config.batch_size  # per device; TRL needs whole groups of num_generations in it
        assert len(dataset) >= 1 and per_step % config.num_generations == 0


def documented_commands() -> dict[str, list[list[str]]]:
    """Each section of examples/README.md (``### `name` ...``) -> the commands of its bash blocks."""
    text = (EXAMPLES_DIR / "README.md").read_text()
    parts = re.split(r"^### `(\w+)`", text, flags=re.M)
    sections = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
        lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
        sections[name] = [shlex.split(line) for line in lines if line.strip()]
    return sections


def test_every_cpu_example_is_documented_with_its_command():
    sections = documented_commands()
    configs = {p.stem for p in EXAMPLES_DIR.glob("*.yaml")} - {"quickstart"}
    assert configs == set(CPU_EXAMPLES)
    for name in CPU_EXAMPLES:
        assert ["aligngym", "train", f"examples/{name}.yaml"] in sections[name], name
    (rollout,) = sections["data"]
    assert rollout[:2] == ["aligngym", "rollout"] and "--samples-per-prompt" in rollout
    data = rollout[rollout.index("--out") + 1]
    for name in OFFLINE:
        assert load_config(EXAMPLES_DIR / f"{name}.yaml", data=__file__).method == name
        assert f"data: {data}" in (EXAMPLES_DIR / f"{name}.yaml").read_text()


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """One documented command, in ``cwd`` (where ``examples/`` links to the repository's)."""
    assert argv[0] == "aligngym", argv
    result = subprocess.run(
        [sys.executable, "-m", "aligngym", *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder to run the README's commands from: ``examples/`` is the repository's, ``runs/`` is new."""
    root = tmp_path_factory.mktemp("examples")
    (root / "examples").symlink_to(EXAMPLES_DIR.resolve())
    return root


@pytest.fixture(scope="module")
def rollout_data(workdir) -> Path:
    """The README's `data` rollout, run once for the offline examples."""
    (argv,) = documented_commands()["data"]
    _run(argv, workdir)
    return workdir / argv[argv.index("--out") + 1]


def _summary_files(stdout: str, output_dir: str) -> list[str]:
    """The names the run's summary lists under ``written to OUTPUT_DIR:``."""
    lines = stdout.splitlines()
    return [line.split()[0] for line in lines[lines.index(f"written to {output_dir}:") + 1 :]]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@pytest.mark.slow
def test_the_rollout_gives_every_prompt_several_samples(rollout_data):
    rows = [json.loads(line) for line in rollout_data.read_text().splitlines()]
    by_seed: dict[int, set[int]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], set()).add(row["sample_index"])
    assert len(rows) == 64 * 8 and all(samples == set(range(8)) for samples in by_seed.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_EXAMPLES)
def test_example_runs_as_documented(name, workdir, request):
    from aligngym.trainers.logging import read_metrics

    if name in OFFLINE:
        request.getfixturevalue("rollout_data")
    config = load_config(EXAMPLES_DIR / f"{name}.yaml", data=__file__ if name in OFFLINE else None)
    for argv in documented_commands()[name]:
        result = _run(argv, workdir)
    out = workdir / config.output_dir
    console = result.stdout + result.stderr
    assert f"{config.method} on {config.env} finished in " in result.stdout
    assert "{'loss'" not in console and "FutureWarning" not in console and "Loading weights" not in console
    files = _summary_files(result.stdout, config.output_dir)
    assert files[0] == "metrics.jsonl" and "model/" in files and all((out / f).exists() for f in files)
    rows = read_metrics(out)
    first, last = rows[: max(1, len(rows) // 4)], rows[-max(1, len(rows) // 4) :]
    if name in ("grpo", "rloo", "selfplay"):
        assert all(r["reward"] is not None for r in rows) and "reward_curve.png" in files
    if name == "grpo":
        held_out = json.loads((out / "held_out.json").read_text())
        assert held_out["after"]["episodes"] == config.eval_episodes and "greedy accuracy" in result.stdout
    if name == "selfplay":  # every seat's reward, whether or not its turns are trained on
        assert all("seat/agent_0/reward" in r and "seat/agent_1/reward" in r for r in rows)
        assert "per seat    agent_0 " in result.stdout
    if name == "dpo":  # the pairs it trains on: the implicit reward margin grows
        assert _mean(last, "rewards/margins") > _mean(first, "rewards/margins")
    if name == "reward":
        assert _mean(last, "accuracy") > _mean(first, "accuracy") and _mean(last, "loss") < _mean(
            first, "loss"
        )
    if name == "sft":
        assert _mean(last, "loss") < _mean(first, "loss")
    if name == "iterate":  # fine-tuning on the rounds' best samples raises the next rollouts' reward
        assert [r["round"] for r in rows] == list(range(config.rounds + 1))
        assert rows[-1]["reward"] > rows[0]["reward"]
        assert all((out / f"round{r}" / "trajectories.jsonl").exists() for r in range(config.rounds + 1))
