"""DPO on the policy's own turns: preference pairs tokenized with a loss mask that is 1 on assistant tokens only.

A multi-turn completion interleaves the policy's turns with the environment's (user and tool messages after
the first assistant turn). TRL's ``DPOTrainer`` (1.16) trains on every token after the prompt and has no
option to skip some of them, so an unmodified run would raise or lower the likelihood of text the environment
wrote. Trajectory-level DPO wants ``log pi(chosen) - log pi(rejected)`` summed over the policy's actions only:
the environment's tokens are not the policy's to choose, and training on them teaches the model to predict
(or to avoid) what the environment says rather than what to do. So each side is tokenized here with the chat template's ``{% generation %}`` markers, exactly the mask SFT's
``assistant_only_loss`` uses, and TRL's collator is narrowed to it. Every assistant turn still trains, not
only the first, because the trajectory's reward is the outcome of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl import DPOTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import common_prefix_length
from trl.trainer.dpo_trainer import DataCollatorForPreference

from .config import ConfigError

SIDES = ("chosen", "rejected")


def training_chat_template(tokenizer) -> str | None:
    """The template that marks assistant tokens, chosen as SFTTrainer does: the tokenizer's own or TRL's patch."""
    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise ConfigError(
            "model: its chat template has no {% generation %} markers, so the policy's tokens cannot be told "
            "from the environment's; add the markers around assistant turns (see the tiny model's template)"
        ) from None


def encode_conversation(
    tokenizer, prompt: list[dict], completion: list[dict], chat_template: str | None = None, tools=None
) -> tuple[list[int], list[int], list[int]]:
    """Token ids of ``prompt`` (with the generation prompt), of ``prompt + completion``, and the latter's mask.

    The mask is 1 on tokens inside the template's ``{% generation %}`` blocks (assistant content and its
    end-of-turn token), 0 on everything the environment or the template wrote.
    """
    kwargs: dict[str, Any] = {
        "chat_template": chat_template,
        "tools": tools,
        "tokenize": True,
        "return_dict": True,
    }
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + completion, return_assistant_tokens_mask=True, **kwargs)
    mask = list(full["assistant_masks"])
    if 1 not in mask:
        raise ConfigError(
            "model: the chat template marks no assistant token ({% generation %} markers missing or empty)"
        )
    return list(prompt_ids), list(full["input_ids"]), mask


def tokenize_pair(pair: dict[str, Any], tokenizer, chat_template: str | None = None) -> dict[str, list[int]]:
    """``prompt_ids``, ``chosen_ids``/``rejected_ids`` as TRL's DPO collator reads them, plus ``*_mask``."""
    encoded = {
        side: encode_conversation(tokenizer, pair["prompt"], pair[side], chat_template, pair.get("tools"))
        for side in SIDES
    }
    prompt_ids = encoded["chosen"][0]
    # As TRL does: the completion starts where the prompt alone and prompt+completion stop agreeing.
    cut = min(common_prefix_length(prompt_ids, ids) for _, ids, _ in encoded.values())
    row = {"prompt_ids": prompt_ids[:cut]}
    for side, (_, ids, mask) in encoded.items():
        row[f"{side}_ids"], row[f"{side}_mask"] = ids[cut:], mask[cut:]
    return row


@dataclass
class AssistantMaskCollator(DataCollatorForPreference):
    """TRL's preference collator, its ``completion_mask`` narrowed to the policy's tokens (``*_mask`` = 1)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        output = super().torch_call(examples)
        completion_mask = output["completion_mask"]
        keep = torch.zeros_like(completion_mask)
        # Rows are every example's chosen side, then every example's rejected side, as in the parent.
        rows = [[0] * len(e["prompt_ids"]) + list(e[f"{side}_mask"]) for side in SIDES for e in examples]
        for i, row in enumerate(rows):
            row = self._truncate(row)
            keep[i, : len(row)] = torch.tensor(row, dtype=keep.dtype)
        output["completion_mask"] = completion_mask * keep
        return output

    def _truncate(self, row: list[int]) -> list[int]:
        if self.max_length is None:
            return row
        return row[: self.max_length] if self.truncation_mode == "keep_start" else row[-self.max_length :]


class AssistantOnlyDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose dataset is tokenized by ``tokenize_pair``; pass an ``AssistantMaskCollator``."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        template = training_chat_template(processing_class)
        dataset = dataset.map(
            tokenize_pair,
            fn_kwargs={"tokenizer": processing_class, "chat_template": template},
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {dataset_name} pairs (assistant turns only)",
        )
        if args.max_length is not None and args.truncation_mode == "keep_start":
            # As TRL does: a prompt that fills max_length would leave no completion token to learn from.
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, *(f"{side}_mask" for side in SIDES)]


def assistant_mask_collator(tokenizer, args) -> AssistantMaskCollator:
    """The collator for ``args`` (a ``DPOConfig``), padding with the tokenizer's pad (or end) token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return AssistantMaskCollator(
        pad_token_id=pad,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
