"""Training configs: dataclasses with a help string per field, loaded from YAML by ``aligngym train``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grpo", "rloo", "dpo", "sft", "reward", "iterate")
#: Methods that learn from a trajectory file instead of playing the environment.
OFFLINE_METHODS = ("dpo", "sft", "reward")


class ConfigError(ValueError):
    """A config that cannot run; the message says which key to fix and how."""


@dataclass
class TrainConfig:
    """One training run: which environment gives rewards, which policy learns, and how."""

    method: str = field(default="grpo", metadata={"help": f"Training method, one of {', '.join(METHODS)}."})
    env: str = field(default="aligngym/Arithmetic-v0", metadata={"help": "Registered environment id."})
    env_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Keyword arguments of the env."}
    )
    model: str = field(default="tiny", metadata={"help": "'tiny' (built-in), a local path or a hub name."})
    output_dir: str = field(default="runs/train", metadata={"help": "Where metrics, plot and model go."})
    seed: int = field(default=0, metadata={"help": "Seed of the model init, data order and sampling."})
    num_prompts: int = field(
        default=256, metadata={"help": "Episodes seeds 0..N-1 of the env form the prompt dataset."}
    )
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Completions per optimizer step (per device)."})
    num_generations: int = field(default=8, metadata={"help": "Group size: completions per prompt."})
    max_new_tokens: int = field(default=16, metadata={"help": "Most tokens the policy writes per turn."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature during rollouts."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient against the reference policy."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    save_model: bool = field(default=True, metadata={"help": "Save the final model to OUTPUT_DIR/model."})
    data: str | None = field(
        default=None, metadata={"help": "dpo/sft: trajectory JSONL (from `aligngym rollout`) to learn from."}
    )
    min_margin: float = field(
        default=0.1, metadata={"help": "dpo: least reward gap between chosen and rejected."}
    )
    max_pairs_per_prompt: int = field(default=4, metadata={"help": "dpo: most pairs taken from one prompt."})
    reward_threshold: float | None = field(
        default=None, metadata={"help": "sft: keep trajectories with reward >= this (rejection sampling)."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "sft: keep the k best trajectories per prompt."}
    )
    rounds: int = field(default=2, metadata={"help": "iterate: rounds of rollout -> train."})
    inner_method: str = field(
        default="sft", metadata={"help": "iterate: training each round (sft, dpo, grpo, rloo)."}
    )
    episodes_per_round: int = field(default=64, metadata={"help": "iterate: episodes rolled out per round."})
    samples_per_prompt: int = field(
        default=4, metadata={"help": "iterate: rollouts per episode seed (dpo/sft need several to compare)."}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank via peft; 0 trains all weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={"help": "peft target modules ('all-linear' or comma-separated names)."},
    )
    use_vllm: bool = field(
        default=False, metadata={"help": "grpo/rloo: generate with vLLM (TRL syncs weights)."}
    )
    vllm_mode: str = field(
        default="colocate", metadata={"help": "grpo/rloo with use_vllm: 'server' or 'colocate'."}
    )
    save_steps: int = field(
        default=0, metadata={"help": "Checkpoint every N steps (0: none); needed for resume."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})
    trl: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Extra TRL trainer arguments passed through verbatim."}
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` for values that cannot work, before any model is loaded."""
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not supported; use one of {', '.join(METHODS)}")
        for name in ("num_prompts", "max_steps", "batch_size", "num_generations", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.method == "iterate":
            if self.inner_method not in ("sft", "dpo", "grpo", "rloo"):
                raise ConfigError(f"inner_method: {self.inner_method!r}; use one of sft, dpo, grpo, rloo")
            if self.inner_method == "sft" and self.reward_threshold is None and self.top_k is None:
                raise ConfigError("iterate with sft needs reward_threshold and/or top_k")
            if self.rounds < 1 or self.episodes_per_round < 1 or self.samples_per_prompt < 1:
                raise ConfigError("rounds, episodes_per_round and samples_per_prompt must be >= 1")
            return
        if self.method in OFFLINE_METHODS:
            if not self.data:
                raise ConfigError(
                    f"data: method {self.method} learns from trajectories; set data: FILE.jsonl"
                )
            if not Path(self.data).exists():
                raise ConfigError(
                    f"data: {self.data!r} not found (write it with `aligngym rollout ... --out`)"
                )
            if self.method == "sft" and self.reward_threshold is None and self.top_k is None:
                raise ConfigError(
                    "sft needs reward_threshold and/or top_k to choose which trajectories to keep"
                )
            return
        if self.num_generations < 2:
            raise ConfigError("num_generations: GRPO needs >= 2 completions per prompt to compare them")
        if self.batch_size % self.num_generations:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations})"
            )
        if self.vllm_mode not in ("server", "colocate"):
            raise ConfigError(f"vllm_mode: {self.vllm_mode!r}; use 'server' or 'colocate'")
        if self.resume and self.save_steps <= 0:
            raise ConfigError("resume: needs checkpoints; set save_steps > 0 as well")
        if not isinstance(self.env_kwargs, dict) or not isinstance(self.trl, dict):
            raise ConfigError("env_kwargs and trl must be mappings")


_OPTIONAL_TYPES = {"data": str, "reward_threshold": float, "top_k": int}


def _yaml11_float(text: str) -> float | None:
    """``text`` as a finite float when it is a plain number like ``1e-5`` (not ``nan``, ``inf`` or words)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and any(c.isdigit() for c in text) else None


def help_text(cls: type = TrainConfig) -> str:
    """One line per field: name, default and help, for ``aligngym train --help``."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML file onto ``TrainConfig``; unknown keys and wrong types are ``ConfigError``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
    for key, value in data.items():
        expected = type(known[key].default) if known[key].default is not dataclasses.MISSING else dict
        if known[key].default is None:
            expected = _OPTIONAL_TYPES[key]
            if value is None:
                continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        elif expected is float and isinstance(value, str) and _yaml11_float(value) is not None:
            # YAML 1.1 reads 1e-5 (no dot) as a string; it is the usual way to write a learning rate.
            data[key] = _yaml11_float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} must be {expected.__name__}, got {value!r}")
        elif expected is float and not math.isfinite(value):
            raise ConfigError(f"{path}: {key} must be a finite float, got {value!r}")
    config = TrainConfig(**data)
    config.validate()
    return config
