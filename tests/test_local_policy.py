"""The tiny built-in policy, the local transformers agent, and the token bookkeeping of env rollouts."""

from __future__ import annotations

import asyncio

import pytest

from aligngym.agents.local import SamplingConfig, TransformersAgent, chat_prompt_ids, generate_batch
from aligngym.agents.tiny import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer
from aligngym.trainers.env_rollout import EnvRollout, prompt_key
from aligngym.trainers.tokens import env_suffix_ids


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


def test_tokenizer_round_trips_text_and_renders_chatml():
    tok = build_tiny_tokenizer()
    text = "def f(x):\n    return x + 1  # ok!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"


def test_tiny_model_is_deterministic_per_seed_and_saves(tmp_path):
    a, b = build_tiny_model(), build_tiny_model()
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    a.save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(str(tmp_path))  # the same code path as a hub model
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == model.config.vocab_size


def test_generate_batch_returns_exact_ids_and_logprobs(tiny):
    model, tok = tiny
    prompts = [
        chat_prompt_ids(tok, [{"role": "user", "content": c}]) for c in ("1+1=", "a much longer prompt")
    ]
    out = generate_batch(model, tok, prompts, SamplingConfig(max_new_tokens=5))
    for resp in out:
        assert 1 <= len(resp.token_ids) <= 5 and len(resp.logprobs) == len(resp.token_ids)
        assert all(lp <= 0.0 for lp in resp.logprobs)
        assert resp.text == tok.decode(resp.token_ids, skip_special_tokens=True)
    greedy = SamplingConfig(max_new_tokens=5, temperature=0)
    assert (
        generate_batch(model, tok, prompts, greedy)[1].token_ids
        == generate_batch(model, tok, prompts[1:], greedy)[0].token_ids
    )


def test_transformers_agent_batches_concurrent_requests(tiny):
    model, tok = tiny
    agent = TransformersAgent(model, tok, sampling=SamplingConfig(max_new_tokens=3))
    calls = []
    original = agent._generate
    agent._generate = lambda ids: calls.append(len(ids)) or original(ids)

    async def main():
        return await asyncio.gather(*(agent.act([{"role": "user", "content": str(i)}]) for i in range(6)))

    responses = asyncio.run(main())
    assert len(responses) == 6 and calls == [6]


def test_env_suffix_ids_marks_exactly_the_template_text(tiny):
    _, tok = tiny
    history = [{"role": "user", "content": "2+2="}]
    generated = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    new = [{"role": "assistant", "content": "5"}, {"role": "user", "content": "Wrong."}]
    suffix = env_suffix_ids(tok, history, generated, new)
    assert tok.decode(suffix) == "\n<|im_start|>user\nWrong.<|im_end|>\n<|im_start|>assistant\n"
    # Cut by length: the end-of-turn token was never generated, so it belongs to the environment's text.
    suffix = env_suffix_ids(tok, history, generated[:-1], new)
    assert tok.decode(suffix).startswith("<|im_end|>\n<|im_start|>user")
    full = chat_prompt_ids(tok, history) + generated + env_suffix_ids(tok, history, generated, new)
    assert full == chat_prompt_ids(tok, history + new)


def test_env_rollout_masks_environment_tokens(tiny):
    import aligngym  # noqa: F401

    model, tok = tiny
    env_kwargs = {"max_turns": 3}
    from aligngym.envs.registry import make

    env = make("aligngym/Arithmetic-v0", **env_kwargs).unwrapped
    _, info = env.reset(seed=4)
    prompt = info["messages"]
    rollout = EnvRollout(
        "aligngym/Arithmetic-v0",
        env_kwargs,
        {prompt_key(prompt): (4, None)},
        SamplingConfig(max_new_tokens=3),
    )
    episodes = rollout.play(model, tok, [prompt, prompt])
    for ep in episodes:
        assert len(ep.completion_ids) == len(ep.env_mask) == len(ep.logprobs)
        turns = sum(1 for m in ep.messages if m["role"] == "assistant")
        # Every environment span sits between two generated spans and was written by the env.
        env_text = tok.decode([t for t, m in zip(ep.completion_ids, ep.env_mask, strict=True) if m == 0])
        assert env_text.count("<|im_start|>user") == turns - 1
        assert (0 in ep.env_mask) == (turns > 1)
    with pytest.raises(KeyError, match="dataset"):
        rollout.play(model, tok, [[{"role": "user", "content": "not from the env"}]])


def test_self_play_rollout_shares_episodes_between_seats(tiny):
    import aligngym

    model, tok = tiny
    env = aligngym.make("aligngym/JudgedDebate-v0", rounds=2)
    _, infos = env.reset(seed=1)
    p0, p1 = infos["debater_0"]["messages"], infos["debater_1"]["messages"]
    assert p0 != p1
    tasks = {prompt_key(p0): (1, "debater_0"), prompt_key(p1): (1, "debater_1")}
    rollout = EnvRollout("aligngym/JudgedDebate-v0", {"rounds": 2}, tasks, SamplingConfig(max_new_tokens=4))
    slots = rollout.play(model, tok, [p0, p1, p0])
    assert [s.seat for s in slots] == ["debater_0", "debater_1", "debater_0"]
    # one episode serves both seats; the repeated prompt gets an episode of its own
    assert slots[0].episode_id == slots[1].episode_id != slots[2].episode_id
    for slot in slots:
        assert slot.done and len(slot.completion_ids) == len(slot.env_mask) == len(slot.logprobs)
        assert slot.env_mask.count(0) > 0  # the opponent's argument came back as environment tokens
    assert slots[0].reward + slots[1].reward == 0.0  # zero-sum, per seat


@pytest.mark.slow
def test_grpo_self_play_on_a_multi_agent_env(tmp_path):
    from aligngym.trainers.config import TrainConfig
    from aligngym.trainers.logging import read_metrics
    from aligngym.trainers.run import train

    config = TrainConfig(
        env="aligngym/JudgedDebate-v0",
        env_kwargs={"rounds": 1},
        num_prompts=4,
        max_steps=2,
        batch_size=8,
        num_generations=4,
        max_new_tokens=8,
        output_dir=str(tmp_path),
        save_model=False,
    )
    train(config)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert "rewards/won/mean" in rows[0] and "rewards/quotes_verified/mean" in rows[0]


def test_finished_rank_keeps_generating_in_lockstep_until_all_ranks_finish(tiny):
    # Simulates a second training process whose episodes run two rounds longer than ours.
    from aligngym.envs.registry import make

    model, tok = tiny
    env = make("aligngym/Arithmetic-v0").unwrapped
    _, info = env.reset(seed=2)
    prompt = info["messages"]
    rollout = EnvRollout("aligngym/Arithmetic-v0", {}, {prompt_key(prompt): (2, None)}, SamplingConfig(4))
    calls: list[list[list[int]]] = []
    extra_rounds = iter([True, True])

    def generate(contexts):
        calls.append(contexts)
        return generate_batch(model, tok, contexts, SamplingConfig(max_new_tokens=4))

    def live_anywhere(live_here: bool) -> bool:
        return live_here or next(extra_rounds, False)

    (slot,) = rollout.play(model, tok, [prompt], generate, live_anywhere)
    assert slot.done and len(calls) == 3  # one real turn, then two placeholder calls
    assert calls[1] == calls[2] == [[tok.eos_token_id]]
    assert len(slot.completion_ids) <= 4  # placeholder outputs never reach the episode


def test_vllm_generation_syncs_weights_once_per_step_and_keeps_sampled_ids(tiny):
    # vLLM cannot run on this CPU-only machine: this stand-in has the contract of TRL's VLLMGeneration
    # (generate(prompts=, images=, num_generations=) -> (prompt_ids, completion_ids, top-k logprobs, ids)).
    from types import SimpleNamespace

    from aligngym.trainers.generation import vllm_generate

    _, tok = tiny
    answer = tok.encode("42", add_special_tokens=False) + [tok.eos_token_id]

    class StandIn:
        syncs = 0

        def sync_weights(self):
            self.syncs += 1

        def generate(self, prompts, images, num_generations):
            assert images is None and num_generations == 1
            return prompts, [answer for _ in prompts], [[[-0.5, -2.0]] * len(answer) for _ in prompts], None

    trainer = SimpleNamespace(
        processing_class=tok, state=SimpleNamespace(global_step=0), vllm_generation=StandIn()
    )
    generate = vllm_generate(trainer)
    first = generate([[1, 2], [3]])
    generate([[4]])
    assert trainer.vllm_generation.syncs == 1
    trainer.state.global_step = 1
    generate([[5]])
    assert trainer.vllm_generation.syncs == 2
    assert [r.text for r in first] == ["42", "42"]
    assert first[0].token_ids == answer and first[0].logprobs == [-0.5] * len(answer)
    assert first[0].finish_reason == "stop"
