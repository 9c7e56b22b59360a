"""Turn stored trajectories into training data: preference pairs (DPO, reward models) and filtered SFT sets.

Trajectories of the same task are grouped by their prompt: the messages before the first assistant turn
(plus the env id and, for multi-agent rows, the seat). Within a group the higher-reward trajectory is
``chosen`` and the lower one ``rejected`` when their rewards differ by at least ``min_margin``. Rows that
failed (``error`` set) never enter training data.

Pair schema (conversational, as TRL's DPOTrainer and RewardTrainer read it)::

    {"prompt": [messages before the first assistant turn],
     "chosen": [the rest of the better conversation], "rejected": [the rest of the worse one],
     "chosen_reward": float, "rejected_reward": float, "env_id": str, "chosen_id": str, "rejected_id": str}

In a multi-turn episode ``chosen`` and ``rejected`` hold the environment's later turns too (user and tool
messages), because the policy's later turns answered them. They are context, not targets: DPO's loss covers
the assistant tokens only (``trainers/turn_masks.py``), while a reward model scores the whole conversation,
environment turns included, since that is what it judges.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PairConfig:
    """How pairs and SFT sets are cut from trajectories."""

    min_margin: float = field(default=0.1, metadata={"help": "Least reward gap between chosen and rejected."})
    max_pairs_per_prompt: int = field(default=4, metadata={"help": "Most pairs taken from one prompt group."})
    reward_threshold: float | None = field(
        default=None, metadata={"help": "SFT: keep trajectories with reward >= this."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "SFT: keep the k best trajectories per prompt."}
    )


def split_prompt(messages: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Messages before the first assistant turn, and the rest (the completion)."""
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            return messages[:i], messages[i:]
    return list(messages), []


def group_by_prompt(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Successful trajectories grouped by task: env id, seat and the prompt messages."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("error"):
            continue
        prompt, completion = split_prompt(row.get("messages") or [])
        if not prompt or not completion:
            continue
        key = json.dumps([row.get("env_id"), row.get("agent_id"), prompt], sort_keys=True, ensure_ascii=False)
        groups[key].append(row)
    return groups


def _row_id(row: dict[str, Any]) -> str:
    return f"{row.get('episode_id') or row.get('episode')}:{row.get('agent_id') or ''}"


def build_pairs(rows: Iterable[dict[str, Any]], config: PairConfig | None = None) -> list[dict[str, Any]]:
    """Preference pairs, best-against-worst first within each prompt group; deterministic."""
    config = config or PairConfig()
    pairs = []
    for group in group_by_prompt(rows).values():
        ranked = sorted(group, key=lambda r: (-float(r["reward"]), _row_id(r)))
        taken = 0
        seen: set[tuple[str, str]] = set()
        # Walk from the widest gap inwards: best vs worst, best vs second worst, second best vs worst, ...
        candidates = sorted(
            ((i, j) for i in range(len(ranked)) for j in range(len(ranked)) if i < j),
            key=lambda ij: (-(float(ranked[ij[0]]["reward"]) - float(ranked[ij[1]]["reward"])), ij),
        )
        for i, j in candidates:
            if taken >= config.max_pairs_per_prompt:
                break
            better, worse = ranked[i], ranked[j]
            if float(better["reward"]) - float(worse["reward"]) < config.min_margin:
                continue
            prompt, chosen = split_prompt(better["messages"])
            _, rejected = split_prompt(worse["messages"])
            if chosen == rejected or (_row_id(better), _row_id(worse)) in seen:
                continue
            seen.add((_row_id(better), _row_id(worse)))
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_reward": float(better["reward"]),
                    "rejected_reward": float(worse["reward"]),
                    "env_id": better.get("env_id"),
                    "chosen_id": _row_id(better),
                    "rejected_id": _row_id(worse),
                }
            )
            taken += 1
    return pairs


def why_no_pairs(rows: Iterable[dict[str, Any]], config: PairConfig | None = None) -> str:
    """Why ``build_pairs`` finds no pair in ``rows``: the first thing that stops it, and what to do."""
    config = config or PairConfig()
    rows = list(rows)
    ok = [r for r in rows if not r.get("error")]
    if config.max_pairs_per_prompt < 1:
        return f"--max-pairs-per-prompt is {config.max_pairs_per_prompt}"
    if not rows:
        return "the file holds no trajectories"
    if not ok:
        return f"all {len(rows)} trajectories failed (their error is set); fix the run and roll out again"
    groups = list(group_by_prompt(ok).values())
    if not groups:
        return "no trajectory has both a prompt and an assistant reply"
    if all(len(g) == 1 for g in groups):
        return (
            f"every prompt appears once ({len(groups)} prompts): a pair needs two samples of the same prompt; "
            "rerun rollout with --samples-per-prompt 4"
        )
    gaps = [max(float(r["reward"]) for r in g) - min(float(r["reward"]) for r in g) for g in groups]
    widest = max(gaps)
    if widest < config.min_margin:
        several = sum(len(g) > 1 for g in groups)
        return (
            f"no two samples of a prompt differ by --min-margin {config.min_margin:g} ({several} prompts have "
            f"several samples; the widest reward gap is {widest:g}): lower --min-margin, sample more per "
            "prompt, or raise the temperature"
        )
    return "the samples whose rewards differ enough have identical replies"


def build_sft(rows: Iterable[dict[str, Any]], config: PairConfig | None = None) -> list[dict[str, Any]]:
    """Rejection sampling: whole conversations above the threshold and/or the top-k per prompt."""
    config = config or PairConfig()
    if config.reward_threshold is None and config.top_k is None:
        raise ValueError("SFT filtering needs reward_threshold or top_k (or both)")
    kept = []
    for group in group_by_prompt(rows).values():
        ranked = sorted(group, key=lambda r: (-float(r["reward"]), _row_id(r)))
        if config.reward_threshold is not None:
            ranked = [r for r in ranked if float(r["reward"]) >= config.reward_threshold]
        if config.top_k is not None:
            ranked = ranked[: config.top_k]
        kept += [
            {"messages": r["messages"], "reward": float(r["reward"]), "env_id": r.get("env_id")}
            for r in ranked
        ]
    return kept


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSONL; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
