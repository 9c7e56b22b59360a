"""The tiny built-in policy: a random-initialised causal LM and a character tokenizer, built locally.

Nothing is downloaded: the tokenizer is assembled with ``tokenizers`` from a fixed character set, the model
from a ``LlamaConfig``. It is small enough to train on a laptop CPU in minutes, and it is a real
transformers model, so every code path that loads a hub model is exercised by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import string
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_NAME = "tiny"
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
#: One pre-token per character. Not ``.``, which leaves newlines out, so a blank line ("\n\n") became one unknown token.
CHARACTER = r"[\s\S]"
# Tools the Qwen/Hermes way: a system block of their JSON schemas; calls as the <tool_call> text that
# envs/tool_calls.py reads (exactly json.dumps' spacing); results as `tool` turns. JSON is written with
# ensure_ascii and no blank lines, so every character is one token of the vocabulary (the tokenizer reads a run
# of newlines as one unknown token). Without tools the block is empty.
_CALL_FORMAT = '<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>'
_TOOLS_BLOCK = (
    "{% if tools %}"
    "{{ '<|im_start|>system\n# Tools\nYou may call one or more of these functions:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson(ensure_ascii=true)) }}{% endfor %}"
    "{{ '\n</tools>\nTo call one, reply with " + _CALL_FORMAT + ".<|im_end|>\n' }}"
    "{% endif %}"
)
# An assistant message's calls, OpenAI-style ({"function": {...}}) or flat; arguments as a dict or JSON text.
_TOOL_CALLS = (
    "{% for call in message['tool_calls'] or [] %}"
    "{% set fn = call['function'] or call %}"
    "{{ '<tool_call>{\"name\": ' + (fn['name'] | tojson(ensure_ascii=true)) + ', \"arguments\": ' }}"
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}"
    "{% else %}{{ (fn['arguments'] or {}) | tojson(ensure_ascii=true) }}{% endif %}"
    "{{ '}</tool_call>' }}"
    "{% endfor %}"
)
# ChatML, the format most open chat models use, so the tiny model looks like one to every code path.
# The generation markers let TRL's SFT train on assistant turns only (assistant_only_loss); they cover what
# the assistant writes: its text, its tool calls and <|im_end|>. A chat without tools or tool calls renders
# exactly as before tools were supported (tests/test_tiny_template.py pins it): checkpoints depend on it.
CHAT_TEMPLATE = (
    _TOOLS_BLOCK + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] or '' }}"
    + _TOOL_CALLS
    + "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# How a reply is read back into a message (transformers' ``parse_response``, which TRL's tool loop uses):
# the text before any call is the content, each <tool_call> body is one call's JSON.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


@dataclass
class TinyConfig:
    """Size of the tiny policy; the defaults train visibly on 2 CPU cores in about two minutes."""

    hidden_size: int = field(default=64, metadata={"help": "Width of the transformer."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads per layer."})
    intermediate_size: int = field(default=128, metadata={"help": "Width of the MLP."})
    max_position_embeddings: int = field(default=2048, metadata={"help": "Longest sequence in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a ChatML chat template (printable ASCII; other characters map to unk)."""
    chars = sorted(set(string.printable))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    # One token per character; Fuse joins them back without the spaces WordLevel would insert.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CHARACTER), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<|unk|>",
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(config: TinyConfig | None = None, tokenizer: PreTrainedTokenizerFast | None = None):
    """A random-initialised Llama-style causal LM sized by ``config``, matched to the tiny tokenizer."""
    config = config or TinyConfig()
    tokenizer = tokenizer or build_tiny_tokenizer()
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_model_path(config: TinyConfig | None = None) -> Path:
    """Folder holding the tiny policy in ``save_pretrained`` form, built on first use (no download).

    Materialising it lets everything downstream load it like any hub model (TRL reloads a reference model
    by path, vLLM serves a path), so the tiny model exercises the same code as a real one.
    """
    config = config or TinyConfig()

    def build(folder: Path) -> None:
        tokenizer = build_tiny_tokenizer()
        build_tiny_model(config, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_build(
        "tiny", [asdict(config), CHAT_TEMPLATE, RESPONSE_TEMPLATE, SPECIAL_TOKENS, CHARACTER], build
    )


def cached_build(kind: str, key: Any, build: Callable[[Path], None]) -> Path:
    """A folder under ``$ALIGNGYM_CACHE`` (default ~/.cache/aligngym) that ``build`` fills once per ``key``.

    The folder is built aside and renamed into place, so concurrent builders (test workers) race harmlessly.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(os.environ.get("ALIGNGYM_CACHE", Path.home() / ".cache" / "aligngym"))
    path = root / f"{kind}-{digest}"
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
        build(tmp)
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a slash, or starting like a path, is a path.
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or name.endswith("/")
        or os.sep != "/"
        and os.sep in name
    )


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def model_source_problem(name: str, probe_timeout_s: float = 3.0) -> str | None:
    """Why ``name`` cannot be loaded, found at once (no download retries), or None when it may load.

    A missing local path is said to be one (transformers would call it a malformed repo id); a hub name not in
    the local cache is refused at once when offline (``HF_HUB_OFFLINE``) or when the hub cannot be reached.
    """
    if name == TINY_NAME or Path(name).expanduser().exists():
        return None
    if _looks_like_path(name):
        return f"model path {name!r} does not exist (give a folder holding config.json, or a hub name)"
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
    except ValueError:  # not a valid repo id either
        return f"{name!r} is neither an existing path nor a valid hub name like 'Qwen/Qwen2.5-0.5B'"
    if _offline():
        return f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it first"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    try:
        socket.create_connection(
            (hostname, int(port or (443 if endpoint.startswith("https") else 80))), probe_timeout_s
        ).close()
    except OSError as exc:
        return f"{name!r} is not in the local Hugging Face cache and {host} cannot be reached ({exc.strerror or exc})"
    return None


def load_model_and_tokenizer(
    name_or_path: str, dtype: torch.dtype | str | None = None, device: str | None = None
):
    """Load ``tiny`` (built locally on first use) or any transformers causal LM by path or hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problem = model_source_problem(name_or_path)
    if problem:
        raise OSError(problem)
    path = str(tiny_model_path()) if name_or_path == TINY_NAME else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if device:
        model.to(device)
    return model, tokenizer
