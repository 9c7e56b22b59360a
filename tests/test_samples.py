"""``--samples-per-prompt`` and ``--sampling-seed``: each prompt played N times with its samples numbered,
resume refusing another N, per-request seeds, and ``pairs`` saying why it found none."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from _helpers import solve

from aligngym.agents.base import AgentResponse
from aligngym.agents.scripted import ScriptedAgent
from aligngym.agents.seeding import derive_seed, request_seed
from aligngym.cli import main
from aligngym.rollout import episode_seeds, rollout
from aligngym.trajectory import TrajectoryFileError, read_trajectories

ARITH = "aligngym/Arithmetic-v0"


def test_each_prompt_is_played_n_times(tmp_path):
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(
        rollout(
            ARITH, ScriptedAgent(solve), episodes=3, samples_per_prompt=4, seed=10, out=out, progress=False
        )
    )
    rows = sorted(read_trajectories(out), key=lambda r: r["episode"])
    assert summary.written == summary.requested == 12
    assert [(r["episode"], r["prompt_index"], r["sample_index"], r["seed"]) for r in rows] == [
        (i, i // 4, i % 4, 10 + i // 4) for i in range(12)
    ]
    assert all(r["samples_per_prompt"] == 4 for r in rows)
    for _, group in itertools.groupby(rows, key=lambda r: r["prompt_index"]):
        assert len({g["messages"][0]["content"] for g in group}) == 1  # one prompt, four samples


def test_resume_keeps_n_and_refuses_another(tmp_path):
    out = tmp_path / "r.jsonl"
    agent = ScriptedAgent(solve)
    asyncio.run(rollout(ARITH, agent, episodes=2, samples_per_prompt=3, out=out, progress=False))
    summary = asyncio.run(
        rollout(ARITH, agent, episodes=4, samples_per_prompt=3, out=out, resume=True, progress=False)
    )
    assert (summary.skipped, summary.written) == (6, 6) and agent.calls == 12
    with pytest.raises(TrajectoryFileError, match=r"--samples-per-prompt 3 \(this run: 2\)"):
        asyncio.run(
            rollout(ARITH, agent, episodes=4, samples_per_prompt=2, out=out, resume=True, progress=False)
        )


def test_cli_resume_refuses_another_samples_per_prompt(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    asyncio.run(rollout(ARITH, ScriptedAgent(["1"]), episodes=3, out=out, progress=False))
    args = ["rollout", ARITH, "--model", "tiny", "--episodes", "5", "--out", str(out), "--resume"]
    assert main([*args, "--samples-per-prompt", "2"]) == 2
    assert "--samples-per-prompt 1 (this run: 2)" in capsys.readouterr().err
    fresh = ["rollout", ARITH, "--model", "tiny", "--episodes", "5", "--out", str(tmp_path / "x.jsonl")]
    assert main([*fresh, "--samples-per-prompt", "0"]) == 2
    assert "--samples-per-prompt must be >= 1" in capsys.readouterr().err


class SeedProbe:
    """Records the request seed each ``act`` sees, by prompt and turn."""

    name = "probe"

    def __init__(self):
        self.seen: list[tuple[str, int, int | None]] = []

    async def act(self, messages, tools=None):
        turn = sum(m["role"] == "assistant" for m in messages)
        self.seen.append((messages[0]["content"], turn, request_seed()))
        return AgentResponse(text="-1")

    async def aclose(self):
        pass


def _probe(tmp_path, name, **kwargs) -> list[tuple[str, int, int | None]]:
    agent = SeedProbe()
    out = tmp_path / f"{name}.jsonl"
    kwargs = {"episodes": 2, "samples_per_prompt": 2, "env_kwargs": {"max_turns": 2}, **kwargs}
    asyncio.run(rollout(ARITH, agent, out=out, progress=False, concurrency=1, **kwargs))
    return agent.seen


def test_every_request_gets_its_own_reproducible_seed(tmp_path):
    first = _probe(tmp_path, "a", sampling_seed=7)
    assert _probe(tmp_path, "b", sampling_seed=7) == first  # the same run, the same seeds
    seeds = [s for _, _, s in first]
    assert len(first) == 8 and len(set(seeds)) == 8  # 2 prompts x 2 samples x 2 turns, all different
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    # Request seeds follow from the episode's: (sampling seed, env seed, sample), then seat and turn.
    _, episode_seed = episode_seeds(3, 0, samples_per_prompt=2, sampling_seed=7)
    assert episode_seed == derive_seed(7, 1, 1)
    assert derive_seed(episode_seed, "", 1) in seeds
    assert {s for _, _, s in _probe(tmp_path, "c", sampling_seed=8)}.isdisjoint(seeds)
    assert {s for _, _, s in _probe(tmp_path, "d")} == {None}  # unseeded unless asked


def test_a_server_gets_each_requests_seed(chat_server, tmp_path):
    from aligngym.agents.openai_agent import OpenAIAgent

    seen = []
    server = chat_server(lambda messages, request: seen.append(request.get("seed")) or "4")
    agent = OpenAIAgent("m", server.base_url)
    asyncio.run(
        rollout(ARITH, agent, episodes=2, samples_per_prompt=2, sampling_seed=3, out=tmp_path / "r.jsonl")
    )
    expected = {derive_seed(episode_seeds(i, 0, 2, 3)[1], "", 0) for i in range(4)}
    assert set(seen) == expected and len(seen) == 4


def test_a_local_model_repeats_its_samples_with_a_sampling_seed(tmp_path):
    from aligngym.agents.local import SamplingConfig, TransformersAgent

    agent = TransformersAgent("tiny", sampling=SamplingConfig(max_new_tokens=8))

    def replies(name: str, sampling_seed: int) -> list[str]:
        out = tmp_path / f"{name}.jsonl"
        kwargs = {"episodes": 2, "samples_per_prompt": 2, "concurrency": 1, "progress": False}
        asyncio.run(rollout(ARITH, agent, out=out, sampling_seed=sampling_seed, **kwargs))
        return [
            r["messages"][-1]["content"] for r in sorted(read_trajectories(out), key=lambda r: r["episode"])
        ]

    first = replies("a", 5)
    assert replies("b", 5) == first
    assert len(set(first)) > 1  # the samples of one prompt still differ
    assert replies("c", 6) != first


def test_sample_j_samples_alike_whatever_n(tmp_path):
    two = _probe(tmp_path, "two", sampling_seed=3, samples_per_prompt=2)
    three = _probe(tmp_path, "three", sampling_seed=3, samples_per_prompt=3)
    assert set(two) <= set(three)


def test_seats_get_different_seeds(tmp_path):
    agent = SeedProbe()
    asyncio.run(
        rollout(
            "aligngym/Debate-v0", agent, episodes=1, out=tmp_path / "d.jsonl", sampling_seed=1, progress=False
        )
    )
    first_round = [s for _, turn, s in agent.seen if turn == 0]
    assert len(first_round) == len(set(first_round)) > 1


# -- pairs says why it found none ------------------------------------------------------------------------
def _pairs(capsys, rows_file, *flags) -> tuple[int, str, str]:
    code = main(["pairs", str(rows_file), "--out", str(rows_file.with_suffix(".pairs.jsonl")), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pairs_says_why_it_found_none_and_finds_them_with_samples(capsys, tmp_path):
    once = tmp_path / "once.jsonl"
    asyncio.run(rollout(ARITH, ScriptedAgent(solve), episodes=4, out=once, progress=False))
    code, out, err = _pairs(capsys, once)
    assert code == 0 and "wrote 0 pairs" in out
    assert "every prompt appears once (4 prompts)" in err and "--samples-per-prompt 4" in err

    answers = itertools.cycle([solve, lambda m: "-1"])  # right and wrong in turn: a reward gap of 1
    mixed = tmp_path / "mixed.jsonl"
    agent = ScriptedAgent(lambda m: next(answers)(m))
    asyncio.run(
        rollout(ARITH, agent, episodes=4, samples_per_prompt=2, out=mixed, concurrency=1, progress=False)
    )
    code, out, err = _pairs(capsys, mixed)
    assert "wrote 4 pairs" in out and err == ""
    code, out, err = _pairs(capsys, mixed, "--min-margin", "2")
    assert "no two samples of a prompt differ by --min-margin 2 (4 prompts have several samples; " in err
    assert "the widest reward gap is 1)" in err


def test_pairs_reason_for_a_file_of_failures():
    from aligngym.trainers.pairs import why_no_pairs

    rows = [{"error": "boom", "messages": [], "reward": 0.0}] * 2
    assert why_no_pairs(rows).startswith("all 2 trajectories failed")
    assert why_no_pairs([]) == "the file holds no trajectories"


# -- Ray -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_plays_each_prompt_n_times(chat_server, tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra aligngym[ray]")
    from _helpers import run_cli

    server = chat_server(lambda messages, request: solve(messages))
    out = tmp_path / "r.jsonl"
    result = run_cli(
        "rollout",
        ARITH,
        *("--model", "scripted", "--base-url", server.base_url, "--episodes", 3, "--samples-per-prompt", 2),
        *("--workers", 2, "--concurrency", 2, "--seed", 5, "--out", out, "--no-progress"),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 episodes (3 prompts x 2 samples)" in result.stdout
    rows = read_trajectories(out)
    assert sorted((r["episode"], r["prompt_index"], r["sample_index"], r["seed"]) for r in rows) == [
        (i, i // 2, i % 2, 5 + i // 2) for i in range(6)
    ]
