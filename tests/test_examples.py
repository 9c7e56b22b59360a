"""Every example config loads, validates, and its `trl:` keys are real fields of the TRL config it feeds.

The multi-GPU examples cannot run here (no GPU, no hub); this is what keeps them from rotting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aligngym.trainers import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").rglob("*.yaml"))


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
