"""Token-faithful trajectories: the ids a backend sampled are stored as sampled and are what GRPO trains on.

The backend here is the scripted server with a real tokenizer, standing in for vLLM (which cannot run on a CPU
machine), and the local transformers agent with the tiny model. The chat template rewrites history as reasoning
models do (``<think>...</think>`` is dropped from earlier assistant turns), and ``</think>`` is one token, so
re-tokenising a turn's text would not give back the ids that were sampled character by character.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from _helpers import run_cli

from aligngym.agents.base import AgentResponse
from aligngym.agents.local import SamplingConfig, TransformersAgent, fit_prompt_ids
from aligngym.agents.openai_agent import OpenAIAgent
from aligngym.agents.server import ScriptedChatServer
from aligngym.agents.tiny import build_tiny_tokenizer, load_model_and_tokenizer
from aligngym.trainers.tokens import env_suffix_ids, sample_from_turns, trajectory_sample
from aligngym.trajectory import Trajectory, read_trajectories

# ChatML that drops the reasoning of assistant turns before the last user message (as Qwen3's template does).
THINK_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% endfor -%}"
    "{%- for m in messages -%}"
    "{%- set content = m['content'] or '' -%}"
    "{%- if m['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1] -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' + content + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)
TASK = [{"role": "user", "content": "2+2="}]
FEEDBACK = {"role": "user", "content": "Wrong, try again."}


@pytest.fixture(scope="module")
def think_tok():
    tok = build_tiny_tokenizer()
    tok.add_tokens(["</think>"])  # one token, so that text and sampled characters tokenise differently
    tok.chat_template = THINK_TEMPLATE
    return tok


def _chars(tok, text: str) -> list[int]:
    """Ids of ``text`` one character at a time: what a model may sample, not what tokenising the text gives."""
    return [tok.convert_tokens_to_ids(c) for c in text]


def _render_ids(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _play(srv: ScriptedChatServer, **agent_kwargs) -> tuple[Trajectory, list[AgentResponse]]:
    """Two turns against ``srv`` (the answer, feedback, a second answer) recorded as the episode driver does."""

    async def main() -> tuple[Trajectory, list[AgentResponse]]:
        agent = OpenAIAgent("scripted", srv.base_url, timeout=5.0, max_retries=0, **agent_kwargs)
        traj = Trajectory(env_id="test", episode=0, seed=0, messages=list(TASK))
        responses = []
        try:
            for _ in range(2):
                response = await agent.act(traj.messages)
                traj.add_turn_tokens(response)
                traj.turns += 1
                responses.append(response)
                traj.messages = [*traj.messages, {"role": "assistant", "content": response.text}, FEEDBACK]
        finally:
            await agent.aclose()
        return traj, responses

    return asyncio.run(main())


def test_stored_ids_are_the_sampled_ids_and_grpo_trains_on_exactly_them(think_tok):
    tok = think_tok
    sampled = [
        _chars(tok, "<think>add them</think>4") + [tok.eos_token_id],
        _chars(tok, "<think>or 5?</think>5") + [tok.eos_token_id],
    ]
    # Re-tokenising the text would merge "</think>" into one id: not what was sampled.
    assert (
        tok(tok.decode(sampled[0], skip_special_tokens=True), add_special_tokens=False)["input_ids"]
        != (sampled[0][:-1])
    )

    def responder(messages, request):
        turn = sum(m["role"] == "assistant" for m in messages)
        return {"token_ids": sampled[turn]}

    with ScriptedChatServer(responder, tokenizer=tok).run_in_thread() as srv:
        traj, responses = _play(srv, return_tokens=True)
        assert srv.last_request["return_token_ids"] is True and srv.last_request["logprobs"] is True

    assert [r.token_ids for r in responses] == sampled
    assert responses[0].text == "<think>add them</think>4"
    assert responses[0].prompt_ids == _render_ids(tok, TASK)
    # The server sampled turn 1 from a history without the first turn's reasoning.
    assert "add them" not in tok.decode(responses[1].prompt_ids)
    assert all(len(r.logprobs) == len(r.token_ids) for r in responses)

    row = json.loads(traj.to_json())  # what a JSONL file holds: the tokens as JSON text
    assert [t["completion_ids"] for t in json.loads(row["tokens"])] == sampled
    assert [t["turn"] for t in json.loads(row["tokens"])] == [0, 1]

    sample = trajectory_sample(row, tok)
    assert sample.prompt_ids == responses[0].prompt_ids
    assert sample.drift == [1]  # the server's context for turn 1 is not the assembled one
    trained = [i for i, m in zip(sample.completion_ids, sample.env_mask, strict=True) if m]
    assert trained == sampled[0] + sampled[1]
    env = [i for i, m in zip(sample.completion_ids, sample.env_mask, strict=True) if not m]
    assert tok.decode(env) == "\n<|im_start|>user\nWrong, try again.<|im_end|>\n<|im_start|>assistant\n"
    assert sample.completion_ids == sampled[0] + env + sampled[1]  # one sequence, in order
    assert [lp for lp, m in zip(sample.logprobs, sample.env_mask, strict=True) if m] == (
        responses[0].logprobs + responses[1].logprobs
    )
    assert all(lp == 0.0 for lp, m in zip(sample.logprobs, sample.env_mask, strict=True) if not m)
    # The environment's tokens of a rewritten history can only be rendered, with the tokenizer.
    with pytest.raises(ValueError, match="rewrites history"):
        trajectory_sample(row)


def test_without_drift_the_env_tokens_are_the_servers_own():
    tok = build_tiny_tokenizer()  # ChatML that keeps history as it was generated
    with ScriptedChatServer(["4", "5"], tokenizer=tok).run_in_thread() as srv:
        traj, responses = _play(srv, return_tokens=True)
    sample = trajectory_sample(traj)  # no tokenizer: every id comes from the server
    assert sample.drift == []
    assert (
        sample.prompt_ids + sample.completion_ids[: -len(responses[1].token_ids)] == responses[1].prompt_ids
    )
    assert [i for i, m in zip(sample.completion_ids, sample.env_mask, strict=True) if m] == (
        responses[0].token_ids + responses[1].token_ids
    )


def test_a_server_that_ignores_the_request_leaves_the_tokens_unknown():
    with ScriptedChatServer(["4", "5"]).run_in_thread() as srv:  # no tokenizer: ignores return_token_ids
        traj, responses = _play(srv, return_tokens=True)
        assert srv.last_request["return_token_ids"] is True
    assert all(r.token_ids is None and r.prompt_ids is None for r in responses)
    assert traj.tokens is None and json.loads(traj.to_json())["tokens"] == ""
    with pytest.raises(ValueError, match="no token ids"):
        trajectory_sample(traj)


def test_rows_without_tokens_load_and_stay_compact():
    old = json.loads(Trajectory(env_id="e", episode=3, seed=3).to_json())
    assert old["tokens"] == ""
    assert Trajectory.from_dict(old).tokens is None
    traj = Trajectory(env_id="e", episode=0, seed=0)
    traj.add_turn_tokens(AgentResponse(text="x", token_ids=[5, 6], logprobs=[-0.1], prompt_ids=[1]))
    # A logprob per id or none: misaligned logprobs are not guessed into place.
    assert traj.tokens == [{"turn": 0, "prompt_ids": [1], "completion_ids": [5, 6], "logprobs": None}]
    assert Trajectory.from_dict(json.loads(traj.to_json())).tokens == traj.tokens
    sample = trajectory_sample(traj)
    assert (sample.completion_ids, sample.env_mask, sample.logprobs) == ([5, 6], [1, 1], None)


def test_sample_refuses_a_missing_turn():
    turns = [{"turn": 0, "prompt_ids": [1], "completion_ids": [2], "logprobs": [-1.0]}]
    turns.append({"turn": 2, "prompt_ids": [1, 2, 3], "completion_ids": [4], "logprobs": [-1.0]})
    with pytest.raises(ValueError, match="missing"):
        sample_from_turns(turns)


def test_env_suffix_of_a_rewritten_turn_is_the_template_text_after_it(think_tok):
    tok = think_tok
    generated = _chars(tok, "<think>hm</think>4") + [tok.eos_token_id]
    new = [{"role": "assistant", "content": "<think>hm</think>4"}, FEEDBACK]
    suffix = env_suffix_ids(tok, TASK, generated, new)
    assert tok.decode(suffix) == "\n<|im_start|>user\nWrong, try again.<|im_end|>\n<|im_start|>assistant\n"
    # Cut by length: the end-of-turn token was never generated, so it is the environment's.
    suffix = env_suffix_ids(tok, TASK, generated[:-1], new)
    assert tok.decode(suffix).startswith("<|im_end|>\n<|im_start|>user")


def test_local_agent_returns_what_it_sampled_and_the_sample_scores_the_same():
    model, tok = load_model_and_tokenizer("tiny")
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0)
    agent = TransformersAgent(model, tok, sampling=sampling)
    torch.manual_seed(0)

    async def main() -> Trajectory:
        traj = Trajectory(env_id="test", episode=0, seed=0, messages=list(TASK))
        for _ in range(2):
            response = await agent.act(traj.messages)
            assert response.prompt_ids == fit_prompt_ids(tok, traj.messages, agent.max_prompt_tokens)
            assert len(response.logprobs) == len(response.token_ids)
            traj.add_turn_tokens(response)
            traj.turns += 1
            traj.messages = [*traj.messages, {"role": "assistant", "content": response.text}, FEEDBACK]
        await agent.aclose()
        return traj

    traj = asyncio.run(main())
    sample = trajectory_sample(traj, tok)
    turns = traj.tokens
    assert [i for i, m in zip(sample.completion_ids, sample.env_mask, strict=True) if m] == (
        turns[0]["completion_ids"] + turns[1]["completion_ids"]
    )
    # Scoring the assembled sequence with the same model gives back the sampling logprobs wherever its context
    # is the one the turn was sampled from (always turn 0; turn 1 unless drift was reported).
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    start = len(sample.prompt_ids)
    scored = logps[start - 1 :].gather(1, ids[0, start:, None])[:, 0].tolist()
    spans = _runs_of_ones(sample.env_mask)
    assert len(spans) == 2 and 0 not in sample.drift
    for k, (turn, (lo, hi)) in enumerate(zip(turns, spans, strict=True)):
        assert sample.logprobs[lo:hi] == turn["logprobs"]
        if k not in sample.drift:
            assert scored[lo:hi] == pytest.approx(turn["logprobs"], abs=1e-4)


def _runs_of_ones(mask: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of 1s: the turns of a sample (environment tokens always separate them)."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_cli_rollout_stores_the_servers_token_ids_with_return_tokens(tmp_path):
    tok = build_tiny_tokenizer()
    with ScriptedChatServer(["4"], tokenizer=tok).run_in_thread() as srv:
        out = tmp_path / "r.jsonl"
        args = ["rollout", "aligngym/Arithmetic-v0", "--model", "m", "--base-url", srv.base_url]
        result = run_cli(*args, "--episodes", 2, "--return-tokens", "--out", out, "--no-progress")
        assert result.returncode == 0, result.stderr[-2000:]
        plain = tmp_path / "plain.jsonl"
        assert run_cli(*args, "--episodes", 1, "--out", plain, "--no-progress").returncode == 0
    rows = read_trajectories(out)
    for row in rows:
        (turn,) = row["tokens"]
        assert turn["completion_ids"] == tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(turn["prompt_ids"]).startswith("<|im_start|>user")
    assert "tokens" not in read_trajectories(plain)[0]  # not asked for: nothing stored
