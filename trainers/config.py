"""Training configs: dataclasses with a help string per field, loaded from YAML by ``aligngym train``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grpo", "rloo", "dpo", "sft", "reward", "iterate")
#: Methods that learn from a trajectory file instead of playing the environment.
OFFLINE_METHODS = ("dpo", "sft", "reward")
#: What ``iterate`` can train each round (``reward`` trains a classifier, not the policy).
INNER_METHODS = ("sft", "dpo", "grpo", "rloo")

#: Groups of keys as ``aligngym train --help`` lists them: group -> the methods that read its keys.
GROUPS = {
    "common": "every method",
    "online": "grpo, rloo; max_new_tokens and temperature also iterate's rollouts",
    "data": "dpo, sft, reward: learning from a trajectory file",
    "iterate": "iterate: rounds of rollout -> inner_method",
    "lora": "LoRA adapters (peft) instead of full fine-tuning: grpo, rloo, dpo, sft, iterate",
}


class ConfigError(ValueError):
    """A config that cannot run; the message says which key to fix and how."""


def _key(default: Any, help: str, group: str = "common") -> Any:
    """A config key: its default, its help line and the ``GROUPS`` entry it is listed under."""
    metadata = {"help": help, "group": group}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """One training run: which environment gives rewards, which policy learns, and how."""

    method: str = _key("grpo", f"Training method, one of {', '.join(METHODS)}.")
    env: str = _key("aligngym/Arithmetic-v0", "Registered environment id.")
    env_kwargs: dict[str, Any] = _key({}, "Keyword arguments of the env.")
    model: str = _key("tiny", "'tiny' (built-in), a local path or a hub name.")
    output_dir: str = _key("runs/train", "Where metrics, plot and model go.")
    seed: int = _key(0, "Seed of the model init, data order and sampling.")
    max_steps: int = _key(100, "Optimizer steps (per round for iterate).")
    learning_rate: float = _key(1e-3, "AdamW learning rate.")
    batch_size: int = _key(32, "Completions (grpo, rloo) or examples per optimizer step (per device).")
    beta: float = _key(0.0, "KL coefficient against the reference policy (dpo: 0 means TRL's 0.1).")
    logging_steps: int = _key(1, "Log metrics every N steps.")
    save_model: bool = _key(True, "Save the final model to OUTPUT_DIR/model.")
    save_steps: int = _key(0, "Checkpoint every N steps (0: none); needed for resume.")
    resume: bool = _key(False, "Continue from the last checkpoint in output_dir.")
    trl: dict[str, Any] = _key({}, "Extra TRL trainer arguments passed through verbatim.")

    num_prompts: int = _key(256, "Episodes seeds 0..N-1 of the env form the prompt dataset.", "online")
    num_generations: int = _key(8, "Group size: completions per prompt.", "online")
    max_new_tokens: int = _key(16, "Most tokens the policy writes per turn.", "online")
    temperature: float = _key(1.0, "Sampling temperature during rollouts.", "online")
    use_vllm: bool = _key(False, "Generate with vLLM (TRL syncs weights).", "online")
    vllm_mode: str = _key("colocate", "With use_vllm: 'server' or 'colocate'.", "online")
    eval_episodes: int = _key(
        0,
        "Held-out questions (later seeds whose prompts are not trained on) answered greedily before and "
        "after training; writes held_out.json (0: none).",
        "online",
    )
    eval_env_kwargs: dict[str, Any] = _key(
        {}, "Env kwargs of the held-out episodes, over env_kwargs (e.g. Arithmetic's split: test).", "online"
    )

    data: str | None = _key(None, "Trajectory JSONL (from `aligngym rollout`) to learn from.", "data")
    min_margin: float = _key(0.1, "dpo, reward: least reward gap between chosen and rejected.", "data")
    max_pairs_per_prompt: int = _key(4, "dpo, reward: most pairs taken from one prompt.", "data")
    reward_threshold: float | None = _key(
        None, "sft: keep trajectories with reward >= this (rejection sampling).", "data"
    )
    top_k: int | None = _key(None, "sft: keep the k best trajectories per prompt.", "data")

    rounds: int = _key(2, "Rounds of rollout -> train.", "iterate")
    inner_method: str = _key("sft", f"Training each round, one of {', '.join(INNER_METHODS)}.", "iterate")
    episodes_per_round: int = _key(64, "Episodes rolled out per round.", "iterate")
    samples_per_prompt: int = _key(
        4, "Rollouts per episode seed (dpo/sft need several to compare).", "iterate"
    )

    lora_r: int = _key(0, "LoRA rank via peft; 0 trains all weights.", "lora")
    lora_alpha: int = _key(16, "LoRA scaling alpha.", "lora")
    lora_target_modules: str = _key(
        "all-linear", "Target modules ('all-linear' or comma-separated names).", "lora"
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` for values that cannot work, before any model is loaded.

        Every check that applies to ``method`` runs: the common ones, the data file's for methods that read
        one, then the method's own (``CHECKS``).
        """
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not supported; use one of {', '.join(METHODS)}")
        _check_common(self)
        if self.method in OFFLINE_METHODS:
            _check_data(self)
        for check in CHECKS[self.method]:
            check(self)


#: Integer keys that count something and so must be at least 1, whatever the method.
_COUNTS = (
    "num_prompts",
    "max_steps",
    "batch_size",
    "num_generations",
    "max_new_tokens",
    "logging_steps",
    "max_pairs_per_prompt",
    "rounds",
    "episodes_per_round",
    "samples_per_prompt",
)


def _check_common(config: TrainConfig) -> None:
    """Checks every method needs: counts, checkpoints, mappings."""
    for name in _COUNTS:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {getattr(config, name)}")
    for name in ("save_steps", "lora_r", "eval_episodes"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(config, name)}")
    if config.resume and config.save_steps <= 0:
        raise ConfigError("resume: needs checkpoints; set save_steps > 0 as well")
    if not all(isinstance(m, dict) for m in (config.env_kwargs, config.eval_env_kwargs, config.trl)):
        raise ConfigError("env_kwargs, eval_env_kwargs and trl must be mappings")
    if config.eval_episodes and config.method in OFFLINE_METHODS:
        # Held out means not trained on: only methods that play env seeds know the prompts they train on.
        raise ConfigError(
            f"eval_episodes: held-out evaluation is for grpo, rloo and iterate, not {config.method}"
        )


def _check_groups(config: TrainConfig) -> None:
    """grpo, rloo: groups of completions per prompt, and the generation backend."""
    if config.num_generations < 2:
        raise ConfigError("num_generations: GRPO needs >= 2 completions per prompt to compare them")
    if config.batch_size % config.num_generations:
        raise ConfigError(
            f"batch_size ({config.batch_size}) must be a multiple of num_generations ({config.num_generations})"
        )
    if config.vllm_mode not in ("server", "colocate"):
        raise ConfigError(f"vllm_mode: {config.vllm_mode!r}; use 'server' or 'colocate'")


def _check_data(config: TrainConfig) -> None:
    """dpo, sft, reward: the trajectory file exists."""
    if not config.data:
        raise ConfigError(f"data: method {config.method} learns from trajectories; set data: FILE.jsonl")
    if not Path(config.data).exists():
        raise ConfigError(f"data: {config.data!r} not found (write it with `aligngym rollout ... --out`)")


def _check_pairs(config: TrainConfig) -> None:
    """dpo, reward: a preference needs a reward gap."""
    if config.min_margin <= 0:
        raise ConfigError(
            f"min_margin: must be > 0 (equal rewards are no preference), got {config.min_margin}"
        )


def _check_filter(config: TrainConfig) -> None:
    """sft: which trajectories to keep."""
    if config.reward_threshold is None and config.top_k is None:
        raise ConfigError("sft needs reward_threshold and/or top_k to choose which trajectories to keep")
    if config.top_k is not None and config.top_k < 1:
        raise ConfigError(f"top_k: must be >= 1, got {config.top_k}")


def _check_iterate(config: TrainConfig) -> None:
    """iterate: a known inner method, whose own checks run too (its data file is written each round)."""
    if config.inner_method not in INNER_METHODS:
        raise ConfigError(f"inner_method: {config.inner_method!r}; use one of {', '.join(INNER_METHODS)}")
    for check in CHECKS[config.inner_method]:
        try:
            check(config)
        except ConfigError as exc:
            raise ConfigError(f"inner_method {config.inner_method}: {exc}") from None


#: The checks of each method, after the common ones (and the data file's).
CHECKS: dict[str, tuple[Callable[[TrainConfig], None], ...]] = {
    "grpo": (_check_groups,),
    "rloo": (_check_groups,),
    "dpo": (_check_pairs,),
    "sft": (_check_filter,),
    "reward": (_check_pairs,),
    "iterate": (_check_iterate,),
}

_OPTIONAL_TYPES = {"data": str, "reward_threshold": float, "top_k": int}


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def help_text(cls: type = TrainConfig) -> str:
    """Every config key with its default and help, grouped by the methods that read it (``train --help``)."""
    fields = dataclasses.fields(cls)
    width = max(len(f.name) for f in fields)
    sections = []
    for group, readers in GROUPS.items():
        lines = [f"{group} ({readers}):"]
        for f in fields:
            if f.metadata.get("group", "common") == group:
                lines.append(f"  {f.name:<{width}}  {f.metadata.get('help', '')} (default {_default(f)!r})")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _yaml11_float(text: str) -> float | None:
    """``text`` as a finite float when it is a plain number like ``1e-5`` (not ``nan``, ``inf`` or words)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and any(c.isdigit() for c in text) else None


def _coerce(path: Path, f: dataclasses.Field, value: Any) -> Any:
    """``value`` of key ``f`` as the field's type, or ``ConfigError`` naming the key."""
    if f.default is None:
        if value is None:
            return None
        expected = _OPTIONAL_TYPES[f.name]
    else:
        expected = type(_default(f))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads 1e-5 (no dot) as a string; it is the usual way to write a learning rate.
        number = _yaml11_float(value)
        if number is not None:
            return number
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {f.name} must be {expected.__name__}, got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{path}: {f.name} must be a finite float, got {value!r}")
    return value


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
    config = TrainConfig(**{key: _coerce(path, known[key], value) for key, value in data.items()})
    config.validate()
    return config
