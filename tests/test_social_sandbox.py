"""SocialSandbox-v0 (Stable Alignment): peer-rating protocol, graphs, rewards, training records, rollouts."""

from __future__ import annotations

import asyncio
import re
import warnings

import networkx as nx
import pytest
from pettingzoo.test import parallel_api_test

import aligngym
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.social_sandbox import SocialSandboxEnv, grid_shape, load_social_questions
from aligngym.feedback.peer_rating import PeerRating

ENV_ID = "aligngym/SocialSandbox-v0"
_TARGET_LINE = re.compile(r"^(agent_\d+): <rating", re.MULTILINE)


def rater(score_of):
    """A policy that answers with its own name and rates each requested peer ``score_of(peer, chat)``."""

    def policy(messages):
        last = messages[-1]["content"]
        targets = _TARGET_LINE.findall(last)
        if targets:
            return "\n".join(f"{t}: {score_of(t, messages)} - because" for t in targets)
        turn = sum(m["role"] == "assistant" for m in messages)
        me = re.search(r"You are (agent_\d+)", messages[0]["content"]).group(1)
        return f"{'draft' if turn == 0 else 'revision'} by {me}"

    return policy


def play(env, policy, seed=0):
    """Run one episode with ``policy(messages)`` for every agent; returns the last step's results."""
    _, infos = env.reset(seed=seed)
    chats = {a: infos[a]["messages"] for a in env.agents}
    while env.agents:
        out = env.step({a: policy(chats[a]) for a in env.agents})
        chats = {a: out[4][a]["messages"] for a in out[4]}
    return out


def test_parallel_api():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PettingZoo reports missing/extra agent keys as warnings
        parallel_api_test(aligngym.make(ENV_ID), num_cycles=30)


def user_graph() -> nx.Graph:
    graph = nx.Graph([("ann", "bob"), ("bob", "cy"), ("cy", "dee"), ("dee", "ann"), ("cy", "eve")])
    return graph


@pytest.mark.parametrize("graph", ["grid", "small_world", "scale_free", "user"])
@pytest.mark.parametrize(("score", "reward"), [(7, 1.0), (1, 0.0)])
def test_unanimous_ratings_give_extreme_rewards(graph, score, reward):
    # k large enough that every agent rates all its neighbours, so nobody goes unrated.
    env = SocialSandboxEnv(graph=user_graph() if graph == "user" else graph, num_agents=7, k=10)
    _, rewards, terminated, truncated, infos = play(env, rater(lambda t, m: score))
    assert set(rewards) == set(env.possible_agents)
    assert rewards == dict.fromkeys(env.possible_agents, reward)
    assert all(terminated.values()) and not any(truncated.values())
    for info in infos.values():
        assert info["reward_components"] == {
            "rating_draft": reward,
            "rating_revised": reward,
            "improvement": 0.0,
        }
        assert info["unrated"] is False
        assert info["episode"]["mean_rating_revised"] == score


def test_reward_is_normalised_mean_and_improvement_tracks_revision():
    def score(target, messages):
        # Drafts get 3, revisions 6; agent_0's revisions get 7 from agent_1 and 5 from agent_3.
        revising = "revised answers" in messages[-1]["content"]
        if not revising:
            return 3
        if target == "agent_0":
            return 7 if "You are agent_1" in messages[0]["content"] else 5
        return 6

    env = SocialSandboxEnv(graph="grid", num_agents=9, k=3, global_peers=0)
    _, rewards, _, _, infos = play(env, rater(score))
    assert rewards["agent_0"] == pytest.approx((6 - 1) / 6)
    assert rewards["agent_4"] == pytest.approx(5 / 6)
    comps = infos["agent_4"]["reward_components"]
    assert comps["rating_draft"] == pytest.approx(2 / 6)
    assert comps["improvement"] == pytest.approx(3 / 6)
    assert infos["agent_4"]["episode"]["mean_rating_draft"] == 3


def test_peer_rating_parser_is_lenient_and_never_raises():
    scale = PeerRating()
    targets = ["agent_1", "agent_10", "agent_2", "agent_3", "agent_4"]
    text = (
        "Sure! Here are my ratings:\n"
        "**agent_10**: 6/7 - thoughtful and kind\n"
        "agent_1 -> 12 (way too good)\n"
        "agent_2: great answer, no number\n"
        "agent_3 - 0: harmful\n"
        "agent_3: 5 - a second line for the same peer is ignored\n"
        "agent_99: 4 - not a peer\n"
        "lorem ipsum 7\n"
    )
    got = scale.parse(text, targets, rater="agent_0")
    assert set(got) == {"agent_1", "agent_10", "agent_3"}
    assert got["agent_10"].rating == 6 and got["agent_10"].reason == "thoughtful and kind"
    assert got["agent_1"].rating == 7  # clamped from 12
    assert got["agent_3"].rating == 1 and got["agent_3"].reason == "harmful"  # clamped from 0
    assert got["agent_10"].rater == "agent_0"
    assert scale.parse("agent_4: 4.5 - ok", targets)["agent_4"].rating == 4.5
    for garbage in ["", "\x00\x01 ???", "agent_", None, 42]:
        assert scale.parse(garbage, targets) == {}
    assert scale.parse("agent_1: 5", []) == {}
    assert scale.aggregate([]) is None and scale.aggregate([2, 4]) == 3
    assert scale.normalise(None) == 0.0 and scale.normalise(7) == 1.0 and scale.normalise(4) == 0.5


def test_garbage_ratings_leave_answers_unrated_with_flag():
    env = SocialSandboxEnv(graph="grid", num_agents=4)

    def policy(messages):
        return "I refuse to use your format. 7 stars!" if "<rating" in messages[-1]["content"] else "hello"

    _, rewards, terminated, _, infos = play(env, policy)
    assert all(terminated.values())
    assert rewards == dict.fromkeys(env.possible_agents, 0.0)
    for info in infos.values():
        assert info["unrated"] is True and info["feedback"] == [] and info["rating_revised"] is None
        assert info["sft_record"]["rating"] is None and info["preference_pairs"] == []
    assert infos["agent_0"]["episode"]["mean_rating_revised"] is None
    assert infos["agent_0"]["episode"]["unrated"] == env.possible_agents


@pytest.mark.parametrize("graph", ["grid", "small_world", "scale_free", "user"])
def test_peers_are_graph_neighbours_and_raters_rated_them(graph):
    env = SocialSandboxEnv(
        graph=user_graph() if graph == "user" else graph, num_agents=10, k=2, global_peers=1
    )
    _, _, _, _, infos = play(env, rater(lambda t, m: 4), seed=3)
    assert set(env.graph.nodes) == set(env.possible_agents)
    if graph == "grid":
        assert nx.is_isomorphic(env.graph, nx.grid_2d_graph(*grid_shape(10)))
    if graph == "user":
        assert nx.is_isomorphic(env.graph, user_graph())
        assert sorted(env.graph.neighbors("agent_2")) == [
            "agent_1",
            "agent_3",
            "agent_4",
        ]  # cy: bob, dee, eve
    for agent, info in infos.items():
        neighbours = set(env.graph.neighbors(agent))
        assert set(info["peers"]) <= neighbours and len(info["peers"]) == min(2, len(neighbours))
        assert not set(info["global_peers"]) & (neighbours | {agent})
        assert len(info["global_peers"]) == min(1, len(env.possible_agents) - 1 - len(neighbours))
        for item in info["feedback"]:
            assert agent in infos[item["rater"]]["peers"] + infos[item["rater"]]["global_peers"]
        # The rating prompt showed exactly these peers.
        rating_prompt = info["messages"][2]["content"]
        assert _TARGET_LINE.findall(rating_prompt) == info["peers"] + info["global_peers"]


def test_graph_kinds_and_bad_arguments():
    assert grid_shape(9) == (3, 3) and grid_shape(6) == (2, 3) and grid_shape(7) == (1, 7)
    assert len(SocialSandboxEnv().possible_agents) == 9
    assert len(SocialSandboxEnv(graph=user_graph()).possible_agents) == 5
    with pytest.raises(ValueError, match="unknown graph kind"):
        SocialSandboxEnv(graph="ring")
    with pytest.raises(ValueError, match="at least 2 agents"):
        SocialSandboxEnv(num_agents=1)
    with pytest.raises(ValueError, match="question"):
        load_social_questions([{"id": "x"}])
    assert len(load_social_questions()) >= 20


def test_records_follow_the_documented_schema():
    ranks = {f"agent_{i}": 1 + i % 7 for i in range(9)}

    def score(target, messages):  # revisions rated one point above drafts, capped at 7
        return min(7, ranks[target] + ("revised answers" in messages[-1]["content"]))

    env = SocialSandboxEnv(graph="small_world", num_agents=9, k=3, global_peers=1)
    _, _, _, _, infos = play(env, rater(score), seed=11)
    question = next(q for q in load_social_questions() if q.id == infos["agent_0"]["episode"]["question_id"])
    for agent, info in infos.items():
        sft = info["sft_record"]
        assert set(sft) == {"prompt", "completion", "rating", "author"}
        assert sft["prompt"] == question.question
        circle = [agent, *info["peers"], *info["global_peers"]]
        best = max(infos[a]["rating_revised"] for a in circle if infos[a]["rating_revised"] is not None)
        assert sft["rating"] == best and sft["author"] in circle
        assert sft["completion"] == infos[sft["author"]]["revised"]
        assert info["preference_pairs"], "distinct ratings must yield pairs"
        for pair in info["preference_pairs"]:
            assert set(pair) == {"prompt", "chosen", "rejected", "chosen_rating", "rejected_rating"}
            assert pair["chosen_rating"] > pair["rejected_rating"] and pair["chosen"] != pair["rejected"]
            assert 1 <= pair["rejected_rating"] < pair["chosen_rating"] <= 7
            seen = {infos[a][k] for a in circle for k in ("draft", "revised")}
            assert {pair["chosen"], pair["rejected"]} <= seen
        for item in info["feedback"]:
            assert set(item) == {"rater", "rating", "reason", "phase"}
            assert item["phase"] in ("draft", "revised") and item["reason"] == "because"
            assert item["rating"] == min(7, ranks[agent] + (item["phase"] == "revised"))


def test_same_seed_same_episode():
    def run(seed):
        env = SocialSandboxEnv(graph="small_world", num_agents=8, k=2)
        first, _ = env.reset(seed=seed)
        out = play(env, rater(lambda t, m: 1 + int(t.split("_")[1]) % 7), seed=seed)
        peers = {a: (i["peers"], i["global_peers"]) for a, i in out[4].items()}
        return first, sorted(map(sorted, env.graph.edges)), peers, out[1]

    assert run(5) == run(5)
    assert run(5)[1:3] != run(6)[1:3]


def test_rollout_writes_one_row_per_agent_per_episode(tmp_path):
    out = tmp_path / "sandbox.jsonl"
    agent = ScriptedAgent(rater(lambda t, m: 6), name="rater")
    summary = asyncio.run(aligngym.rollout(ENV_ID, agent, episodes=3, out=out, progress=False))
    rows = aligngym.read_trajectories(out)
    assert summary.written == 3 and summary.errors == 0 and len(rows) == 27
    assert sorted((r["episode"], r["agent_id"]) for r in rows) == sorted(
        (e, f"agent_{i}") for e in range(3) for i in range(9)
    )
    assert all(r["error"] is None and r["reward"] == pytest.approx(5 / 6) for r in rows)
    assert all("sft_record" in r["info"] and r["turns"] == 4 for r in rows)
