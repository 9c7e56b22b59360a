"""The tiny policy's chat template: unchanged without tools, and tool calling that TRL accepts and parses back."""

from __future__ import annotations

import json
import string

import pytest
from trl.chat_template_utils import (
    get_training_chat_template,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    supports_tool_calling,
)

from aligngym.agents.tiny import CHAT_TEMPLATE, RESPONSE_TEMPLATE, build_tiny_tokenizer, tiny_model_path
from aligngym.envs.tool_calls import parse_text_calls
from aligngym.envs.tool_use import expert_text

# The template as it was before tools were supported; trained checkpoints and other code depend on its output.
LEGACY_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ (message['content'] or '') + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "3+4="}],
    [
        {"role": "system", "content": "Be brief.\n\tTabs, {braces} and 'quotes' \"too\"."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 5+5?"},
        {"role": "assistant", "content": "10"},
    ],
    [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": ""},
    ],
    [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "tool", "content": "r"},
    ],
    [{"role": "user", "content": "caf\u00e9"}, {"role": "assistant", "content": "<tool_call> as plain text"}],
]
CALL = {"name": "calculator", "arguments": {"expression": "2+3*4", "note": "caf\u00e9"}}


def calculator(expression: str, precision: int = 2) -> str:
    """Evaluate an arithmetic expression (\u00e9 in a docstring stays ASCII once rendered).

    Args:
        expression: The expression, e.g. "2+3".
        precision: Digits after the point.
    """
    return expression


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _render(tok, chat, template=None, **kwargs):
    return tok.apply_chat_template(chat, tokenize=False, chat_template=template, **kwargs)


def _masked(tok, chat, template=None, **kwargs) -> tuple[list[int], str]:
    out = tok.apply_chat_template(
        chat,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        chat_template=template,
        **kwargs,
    )
    ids = out["input_ids"]
    return out["assistant_masks"], tok.decode(
        [i for i, m in zip(ids, out["assistant_masks"], strict=True) if m]
    )


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chats_without_tools_render_byte_identical_to_the_legacy_template(tok, chat, generation_prompt):
    new = _render(tok, chat, add_generation_prompt=generation_prompt)
    assert new == _render(tok, chat, LEGACY_TEMPLATE, add_generation_prompt=generation_prompt)
    assert _masked(tok, chat) == _masked(tok, chat, LEGACY_TEMPLATE)  # the loss mask too


def test_a_chat_without_tools_renders_the_pinned_text(tok):
    assert _render(tok, CHATS[1][:3], add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.\n\tTabs, {braces} and 'quotes' \"too\".<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_and_tool_calls_render_as_the_text_protocol_the_envs_read(tok):
    chat = [
        {"role": "user", "content": "2+3*4?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "name": "calculator", "content": "14"},
        # as aligngym trajectories store it: OpenAI wire form, arguments as JSON text
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": json.dumps(CALL["arguments"])},
                },
                CALL,  # flat form
            ],
        },
    ]
    text = _render(tok, chat, tools=[calculator], add_generation_prompt=True)
    head, _, rest = text.partition("<|im_start|>user\n")
    assert head.startswith("<|im_start|>system\n# Tools\n") and '"name": "calculator"' in head
    assert '"precision": {"type": "integer"' in head and "\\u00e9 in a docstring" in head
    assert rest.startswith("2+3*4?<|im_end|>\n<|im_start|>assistant\n" + expert_text(CALL) + "<|im_end|>\n")
    assert "<|im_start|>tool\n14<|im_end|>\n" in rest
    assert "Checking." + expert_text(CALL) * 2 + "<|im_end|>" in rest
    assert [(c.name, c.arguments) for c in parse_text_calls(rest)] == [(CALL["name"], CALL["arguments"])] * 3
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert set(plain) <= set(string.printable)  # nothing falls outside the character vocabulary
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


def test_the_loss_mask_covers_exactly_what_the_assistant_writes(tok):
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Let me see.", "tool_calls": [CALL]},
        {"role": "tool", "content": "14"},
        {"role": "assistant", "content": "14"},
    ]
    _, masked = _masked(tok, chat, tools=[calculator])
    assert masked == "Let me see." + expert_text(CALL) + "<|im_end|>" + "14<|im_end|>"


def test_trl_accepts_the_template_for_tool_calling_and_training(tok):
    assert supports_tool_calling(tok)
    assert is_chat_template_prefix_preserving(tok)  # TRL splices tool results into generated ids
    assert is_chat_template_stop_token_trained(tok)
    assert get_training_chat_template(tok) is None  # no replacement template: TRL trains on this one


@pytest.mark.parametrize(
    ("reply", "content", "calls"),
    [
        (expert_text(CALL) + "<|im_end|>", "", [CALL]),
        ("Let me see." + expert_text(CALL) + expert_text(CALL) + "<|im_end|>", "Let me see.", [CALL, CALL]),
        ("The answer is 14.<|im_end|>", "The answer is 14.", None),
        ("<tool_call>{not json}</tool_call><|im_end|>", "<tool_call>{not json}</tool_call>", None),
        ('<tool_call>{"name": "calcul', '<tool_call>{"name": "calcul', None),  # cut off by the length limit
    ],
)
def test_trl_parses_a_scripted_reply_back_into_a_message(tok, reply, content, calls):
    # Asked for as a dict on purpose: transformers 5.25 made that the default of tokenize=True, 5.24 returns a list.
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "2+3*4?"}],
        tools=[calculator],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    parsed = parse_response(
        tok, tok(reply, add_special_tokens=False)["input_ids"], prefix=prompt, tools=[calculator]
    )
    assert parsed["role"] == "assistant" and parsed["content"] == content
    if calls is None:
        assert "tool_calls" not in parsed
    else:
        assert parsed["tool_calls"] == [{"type": "function", "function": c} for c in calls]


def test_the_saved_tiny_tokenizer_keeps_both_templates():
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tiny_model_path())
    assert loaded.chat_template == CHAT_TEMPLATE and loaded.response_template == RESPONSE_TEMPLATE


def test_every_printable_text_round_trips_without_unknown_tokens():
    """Blank lines, CRLF and runs of spaces are characters like any other (a blank line once became unk)."""
    tokenizer = build_tiny_tokenizer()
    text = "a\n\nb\r\n\tc  d\n\n\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == len(text)
    assert tokenizer.decode(ids) == text
