"""aligngym/ReasoningGym-v0: reasoning-gym tasks graded by their own scorers, with the grader as a wall."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import gymnasium as gym
import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is the optional extra aligngym[reasoning-gym]")

import aligngym  # noqa: E402  (registers the envs)
from aligngym.agents.scripted import ScriptedAgent  # noqa: E402
from aligngym.envs import reasoning_gym as rgenv  # noqa: E402

ENV_ID = "aligngym/ReasoningGym-v0"
#: One dataset of each kind: arithmetic, logic puzzle, string manipulation, graph, game.
KINDS = ["chain_sum", "knights_knaves", "spell_backward", "shortest_path", "mini_sudoku"]
#: Datasets whose scorer would run the answer as code without the env's guard.
GUARDED = ["string_insertion", "n_queens", "countdown", "puzzle24"]
SEEDS = range(4)


def make(dataset: str = rgenv.DEFAULT_DATASET, **kwargs):
    return gym.make(ENV_ID, dataset=dataset, **kwargs).unwrapped


def tagged(text: str) -> str:
    return f"I worked it out.\n<answer>{text}</answer>"


def play(env, seed: int, reply: str) -> tuple[float, dict]:
    """Reset at ``seed`` and answer once; the reward and the step's info."""
    env.reset(seed=seed)
    _, reward, _, _, info = env.step(reply)
    return reward, info


# -- conformance, correctness, determinism ----------------------------------------------------------------
@pytest.mark.parametrize("dataset", KINDS + GUARDED)
def test_conformance(dataset):
    from aligngym import check_conformance

    check_conformance(ENV_ID, {"dataset": dataset}, seed=7)
    check_conformance(ENV_ID, {"dataset": dataset, "max_turns": 3}, seed=7)


@pytest.mark.parametrize("dataset", KINDS + GUARDED)
def test_gold_answer_earns_one_and_success_a_wrong_one_nothing(dataset):
    env = make(dataset)
    for seed in SEEDS:
        _, info = env.reset(seed=seed)
        gold = info["answer"]
        _, reward, terminated, truncated, info = env.step(tagged(gold))
        assert info["reward_components"] == {"correct": 1.0, "score": 1.0, "format": 1.0}
        assert reward == pytest.approx(1.1) and terminated and not truncated
        other = env.dataset[env.index + 1]["answer"]
        if other.strip().lower() != gold.strip().lower():
            reward, info = play(env, seed, tagged(other))
            assert info["reward_components"]["correct"] == 0.0 and reward < 1.0
    # Through the one episode driver: success is the env's word.
    [traj] = asyncio.run(aligngym.run_episode(env, ScriptedAgent(lambda _: tagged(env.entry["answer"])), 5))
    assert traj.success is True and traj.error is None
    [traj] = asyncio.run(aligngym.run_episode(env, ScriptedAgent(["<answer>no idea</answer>"]), 5))
    assert traj.success is False


def test_same_seed_same_task_and_dataset_seed_moves_them():
    first, second = make("spell_backward"), make("spell_backward")
    questions = [first.reset(seed=s)[0] for s in range(8)]
    assert questions == [second.reset(seed=s)[0] for s in range(8)]
    assert len(set(questions)) > 4, "seeds pick different tasks"
    other = make("spell_backward", dataset_seed=1)
    assert [other.reset(seed=s)[0] for s in range(8)] != questions
    small = make("spell_backward", size=1)
    assert len({small.reset(seed=s)[0] for s in range(5)}) == 1


def test_config_reaches_the_generator():
    env = make("chain_sum", config={"min_terms": 5, "max_terms": 5, "min_digits": 1, "max_digits": 1})
    obs, _ = env.reset(seed=0)
    assert obs.split("\n")[0].count("+") + obs.split("\n")[0].count("-") >= 4


def test_multi_turn_pays_only_the_improvement_and_never_shows_the_answer():
    env = make("spell_backward", max_turns=3)
    _, info = env.reset(seed=2)
    obs, r1, terminated, truncated, _ = env.step(tagged("nope"))
    assert obs == rgenv.RETRY and not (terminated or truncated)
    _, r2, terminated, _, info = env.step(tagged(info["answer"]))
    assert terminated and r1 + r2 == pytest.approx(1.1)


# -- arguments: one clear error at construction -------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "chain_sun"}, "unknown reasoning-gym dataset 'chain_sun'; did you mean chain_sum"),
        ({"config": {"min_term": 2}}, "unknown config key 'min_term'.*did you mean min_terms"),
        ({"config": {"min_terms": 0}}, "bad config for reasoning-gym dataset 'chain_sum'"),
        ({"config": {"seed": 3}}, "must not set 'seed': use the env's dataset_seed"),
        ({"config": [1]}, "config must be an object"),
        ({"size": 0}, "size must be >= 1"),
        ({"dataset": "game_of_life_halting"}, "unsafe scorer: every non-empty answer"),
    ],
)
def test_bad_arguments_raise_one_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        aligngym.make(ENV_ID, **kwargs)


def test_rollout_refuses_an_unknown_dataset_before_any_work(tmp_path):
    from _helpers import run_cli

    out = tmp_path / "rows.jsonl"
    kwargs = json.dumps({"dataset": "spell_backwards"})
    proc = run_cli(
        "rollout", ENV_ID, "--model", "tiny", "--episodes", "1", "--env-kwargs", kwargs, "--out", out
    )
    assert proc.returncode == 2, proc.stderr
    assert "did you mean spell_backward" in proc.stderr + proc.stdout
    assert not out.exists()


def test_import_aligngym_does_not_import_reasoning_gym():
    code = (
        "import sys, aligngym\n"
        "ids = aligngym.registered(); [e.description for e in ids.values()]\n"
        "assert 'aligngym/ReasoningGym-v0' in ids\n"
        "assert 'reasoning_gym' not in sys.modules, 'imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_without_the_package_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import now fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'aligngym\[reasoning-gym\]'"):
        rgenv.ReasoningGymEnv()


# -- the grader as a wall: one test per hole --------------------------------------------------------------
def test_several_different_answers_are_a_hedge_and_earn_nothing():
    env = make("spell_backward")
    _, info = env.reset(seed=1)
    gold = info["answer"]
    for reply in [
        f"<answer>xyz</answer> or <answer>{gold}</answer>",
        f"<answer>{gold}</answer> <answer>xyz</answer>",
        f"<answer><answer>{gold}</answer></answer>",
        f"<answer>{gold}</answer> </answer>",
        f"<answer>{gold}</answer> <answer>",
        "<answer></answer>",
        gold,  # no tag at all
    ]:
        reward, info = play(env, 1, reply)
        assert reward == 0.0 and info["reward_components"]["correct"] == 0.0, reply
        assert info["not_graded"], reply
    reward, info = play(env, 1, f"<answer>{gold}</answer> so, again: <answer> {gold} </answer>")
    assert info["reward_components"] == {"correct": 1.0, "score": 1.0, "format": 0.0}


def test_a_huge_reply_is_read_in_one_pass_and_a_huge_answer_never_reaches_the_scorer():
    env = make("chain_sum")
    _, info = env.reset(seed=0)
    # 200k opening tags and no close: a backtracking regex would be quadratic here.
    reward, info = play(env, 0, "<answer>" * 200_000 + info["answer"])
    assert reward == 0.0 and "never closed" in info["not_graded"]
    called = []
    env.dataset.score_answer = lambda answer, entry: called.append(answer) or 1.0
    reward, info = play(env, 0, tagged("1" * 100_000))
    assert reward == 0.0 and not called and "longer than 8192" in info["not_graded"]


@pytest.mark.parametrize("dataset", KINDS)
def test_degenerate_answers_never_earn_full_credit(dataset):
    env = make(dataset)
    for seed in SEEDS:
        obs, info = env.reset(seed=seed)
        gold, other = info["answer"], env.dataset[env.index + 1]["answer"]
        question = env.entry["question"]
        candidates = ["", "0", "1", "yes", "True", "None", "[]", "A", question, obs]
        if other.strip().lower() != gold.strip().lower():  # a hedge, in both orders and with several joiners
            candidates += [
                f"{a}{sep}{b}" for a, b in [(gold, other), (other, gold)] for sep in ["\n", " or ", ", "]
            ]
        for answer in candidates:
            if answer.strip().lower() == gold.strip().lower():
                continue
            reward, info = play(env, seed, tagged(answer))
            assert info["reward_components"]["correct"] == 0.0, (dataset, answer)


def test_partial_credit_is_not_paid_by_default_and_never_counts_as_success():
    hedge_env = make("chain_sum")
    _, info = hedge_env.reset(seed=0)
    padded = f"{info['answer']} or {int(info['answer']) + 1}"  # reasoning-gym pays len(gold)/len(answer)
    reward, info = play(hedge_env, 0, tagged(padded))
    assert 0 < info["reward_components"]["score"] < 1
    assert info["reward_components"]["correct"] == 0.0 and reward == pytest.approx(0.1)
    paid = make("chain_sum", partial_credit=True)
    reward, info = play(paid, 0, tagged(padded))
    assert reward == pytest.approx(info["reward_components"]["score"] + 0.1)
    [traj] = asyncio.run(aligngym.run_episode(paid, ScriptedAgent([tagged(padded)]), 0))
    assert traj.success is False and 0 < traj.reward < 1.1


def test_a_score_that_rounds_past_one_is_not_full_credit():
    env = make("spell_backward")
    hits = 0
    for seed in range(30):
        _, info = env.reset(seed=seed)
        suffix = "x" * len(info["answer"])  # the gold plus junk: spell_backward sums 1/n per matching letter
        raw = env.dataset.score_answer(info["answer"] + suffix, env.entry)
        reward, info = play(env, seed, tagged(info["answer"] + suffix))
        assert info["reward_components"]["correct"] == 0.0
        if raw > 1.0:  # the premise: reasoning-gym itself calls this more than full credit
            hits += 1
            assert info["score_out_of_range"] == repr(raw) and info["reward_components"]["score"] == 1.0
    assert hits, "no seed reproduced the float rounding; the test no longer tests it"


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -2.0, 7.0, "high", None, ZeroDivisionError("boom")]
)
def test_a_broken_scorer_is_clipped_and_recorded_never_a_crash(bad):
    env = make("chain_sum", partial_credit=True)
    _, info = env.reset(seed=0)

    def scorer(answer, entry):
        if isinstance(bad, Exception):
            raise bad
        return bad

    env.dataset.score_answer = scorer
    _, reward, terminated, _, info = env.step(tagged(info["answer"]))
    assert 0.0 <= info["reward_components"]["score"] <= 1.0
    assert info["reward_components"]["correct"] == 0.0 and reward <= 1.1
    assert "scorer_error" in info or "score_out_of_range" in info
    assert terminated


def test_a_real_scorer_that_raises_is_a_wrong_answer():
    env = make("prime_factorization")
    reward, info = play(env, 0, tagged("yes"))  # reasoning-gym's scorer raises ValueError here
    assert reward == pytest.approx(0.1) and info["scorer_error"].startswith("ValueError")


@pytest.mark.parametrize("dataset", ["string_insertion", "spiral_matrix", "binary_matrix", "n_queens"])
def test_answers_that_the_scorer_would_eval_as_code_are_refused(dataset, tmp_path):
    marker = tmp_path / "ran"
    payload = f"[open({str(marker)!r}, 'w'), entry['answer']][1]"
    env = make(dataset)
    env.reset(seed=0)
    env.dataset.score_answer(payload, dict(env.entry))  # the premise: reasoning-gym runs it
    assert marker.exists()
    marker.unlink()
    reward, info = play(env, 0, tagged(payload))
    assert not marker.exists(), "the answer ran in the grader"
    assert reward == pytest.approx(0.1) and "eval()" in info["not_graded"]


def test_countdown_answers_reach_sympy_only_as_arithmetic(tmp_path):
    marker = tmp_path / "ran"
    env = make("countdown")
    for payload in [f"__import__('os').mkdir({str(marker)!r})", "9**9**9**9", "x+1"]:
        reward, info = play(env, 0, tagged(payload))
        assert reward == pytest.approx(0.1) and "sympy" in info["not_graded"]
    assert not marker.exists()


def test_a_dataset_whose_scorer_pays_any_answer_is_refused_unless_allowed():
    with pytest.raises(ValueError, match="unsafe scorer"):
        make("game_of_life_halting")
    env = make("game_of_life_halting", allow_unsafe_scorer=True)
    paid = [play(env, seed, tagged("whatever"))[1]["reward_components"]["correct"] for seed in SEEDS]
    assert paid == [1.0] * len(SEEDS)  # the reason it is refused: one answer solves every task


def test_puzzle24_pays_only_expressions_of_the_puzzles_own_numbers():
    env = make("puzzle24")
    checked = 0
    for seed in SEEDS:
        env.reset(seed=seed)
        if sorted(env.entry["metadata"]["numbers"]) == [1, 2, 3, 4]:
            continue
        assert env.dataset.score_answer("1*2*3*4", env.entry) == 1.0  # the premise: any 24 will do
        reward, info = play(env, seed, tagged("1*2*3*4"))
        assert info["reward_components"]["correct"] == 0.0 and "numbers" in info["not_graded"]
        checked += 1
    assert checked


def test_propositional_logic_is_refused_for_paying_a_contradiction():
    with pytest.raises(ValueError, match="contradictory premises"):
        make("propositional_logic")
    env = make("propositional_logic", allow_unsafe_scorer=True)
    paid = 0
    for seed in range(20):
        _, info = env.reset(seed=seed)
        atom = env.entry["metadata"]["variables"][0]
        paid += play(env, seed, tagged(f"({atom} ∧ ¬{atom})"))[1]["reward_components"]["correct"]
    assert paid >= 1  # the reason it is refused: a statement that is never true solves some tasks


def test_the_policy_sees_the_question_only():
    env = make("spell_backward", max_turns=2)
    seen: list[list[dict]] = []

    def reply(messages):
        seen.append([dict(m) for m in messages])
        return tagged("wrong")

    [traj] = asyncio.run(aligngym.run_episode(env, ScriptedAgent(reply), 3))
    gold = traj.info["answer"]
    question = env.dataset[traj.info["index"]]["question"]
    assert gold not in question  # the premise of this test's seed
    first = f"{question}\n\n{rgenv.INSTRUCTIONS}"
    assert seen[0] == [{"role": "user", "content": first}]
    assert seen[1][2] == {"role": "user", "content": rgenv.RETRY}
    assert not any(gold in m["content"] for chat in seen for m in chat)
    assert traj.info["dataset"] == "spell_backward"  # the row keeps the gold for analysis; the chat never did
