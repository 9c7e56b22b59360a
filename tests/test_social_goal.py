"""SocialGoal-v0 (Sotopia): private briefings, simultaneous turns, [leave], scripted and model evaluators."""

from __future__ import annotations

import asyncio
import json
import math
import warnings

import pytest
from pettingzoo.test import parallel_api_test

import aligngym
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.datasets import load_rows
from aligngym.envs.social_goal import SocialGoalEnv, load_scenarios
from aligngym.feedback.sotopia import DIMENSIONS, ModelEvaluator, ScriptedEvaluator, Utterance

ENV_ID = "aligngym/SocialGoal-v0"
ROWS = load_rows("scenarios", "social_scenarios.jsonl", names=("scenarios",))  # the shipped scenarios
BIKE = next(r for r in ROWS if r["id"] == "used_bike_sale")  # Maya sells, Leo buys; Leo's secret: $380


def in_range(scores: dict[str, float]) -> bool:
    return set(scores) == set(DIMENSIONS) and all(lo <= scores[d] <= hi for d, (lo, hi) in DIMENSIONS.items())


def play(env, lines, seed=0):
    """Play with fixed lines per agent (one per round, the last repeated); returns the final step's results."""
    env.reset(seed=seed)
    step = 0
    while env.agents:
        out = env.step({a: lines[a][min(step, len(lines[a]) - 1)] for a in env.agents})
        step += 1
    return out, step


def test_parallel_api():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(aligngym.make(ENV_ID), num_cycles=30)


def test_shipped_scenarios_load():
    scenarios = load_scenarios()
    assert len(scenarios) >= 20 and len({s.id for s in scenarios}) == len(scenarios)
    for s in scenarios:
        assert len(s.characters) == 2 and all(s.keywords), s.id
    with pytest.raises(ValueError, match="two 'agents'"):
        load_scenarios([{"id": "solo", "scenario": "x", "agents": [BIKE["agents"][0]]}])


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_briefing_holds_own_goal_and_secret_only(row):
    env = SocialGoalEnv(tasks=[row])
    obs, infos = env.reset(seed=0)
    for i, agent in enumerate(("agent_0", "agent_1")):
        me, other = row["agents"][i], row["agents"][1 - i]
        assert row["scenario"] in obs[agent] and me["name"] in obs[agent]
        assert me["goal"] in obs[agent] and me["secret"] in obs[agent] and me["background"] in obs[agent]
        assert other["goal"] not in obs[agent] and other["secret"] not in obs[agent]
        assert infos[agent]["messages"] == [{"role": "user", "content": obs[agent]}]


def test_simultaneous_turns_relay_the_other_line_and_stop_at_max_turns():
    env = SocialGoalEnv(max_turns=5, tasks=[BIKE])
    env.reset(seed=0)
    obs, *_ = env.step({"agent_0": "Hi Leo, it rides well.", "agent_1": "Hello Maya!"})
    assert obs == {"agent_0": "Leo: Hello Maya!", "agent_1": "Maya: Hi Leo, it rides well."}
    (_, rewards, terminated, truncated, infos), rounds = play(
        env, {"agent_0": ["a", "b"], "agent_1": ["c", "d"]}
    )
    assert rounds == math.ceil(5 / 2) and all(terminated.values()) and not any(truncated.values())
    episode = infos["agent_0"]["episode"]
    assert episode["ended_by"] == "max_turns" and episode["turns"] == 6
    assert [u["speaker"] for u in episode["transcript"][:2]] == ["agent_0", "agent_1"]


def test_leave_ends_the_episode_early():
    env = SocialGoalEnv(max_turns=20, tasks=[BIKE])
    lines = {"agent_0": ["Hi.", "Bye for now [LEAVE]"], "agent_1": ["Hello.", "Hmm."]}
    (_, rewards, terminated, _, infos), rounds = play(env, lines)
    assert rounds == 2 and all(terminated.values()) and not env.agents
    assert infos["agent_1"]["episode"]["ended_by"] == "leave"
    assert infos["agent_1"]["episode"]["left"] == ["agent_0"]
    assert set(rewards) == {"agent_0", "agent_1"}
    # Without [leave] the same talk runs on to max_turns.
    _, rounds = play(env, {"agent_0": ["Hi."], "agent_1": ["Hello."]})
    assert rounds == 10


def test_goal_keywords_raise_goal_and_reward():
    env = SocialGoalEnv(tasks=[BIKE])
    maya = ["It is in good condition and has a firm price of $350.", "Other buyers are interested."]
    (_, rewards, _, _, infos), _ = play(env, {"agent_0": maya, "agent_1": ["I like bikes.", "Nice weather."]})
    goal_0 = infos["agent_0"]["reward_components"]["goal"]
    goal_1 = infos["agent_1"]["reward_components"]["goal"]
    assert goal_0 == 10.0 and goal_1 == 0.0
    assert rewards == {"agent_0": 1.0, "agent_1": 0.0}
    raw = SocialGoalEnv(tasks=[BIKE], normalize=False)
    (_, raw_rewards, *_), _ = play(raw, {"agent_0": maya[:1], "agent_1": ["Could you do 300?"]})
    assert raw_rewards == {"agent_0": 7.5, "agent_1": 2.5}


def test_scripted_evaluator_secret_rules_and_ranges():
    scenario = load_scenarios([BIKE])[0]
    evaluator = ScriptedEvaluator()

    def score(leo_lines, who=1):
        talk = [Utterance(1, t) for t in leo_lines] + [Utterance(0, "Thanks, I understand. Please decide.")]
        return evaluator.score(scenario, talk, who).scores

    assert score(["Could you do 300 with a discount?"])["secret"] == 0.0
    assert score(["Honestly, he has $380 in his pocket."])["secret"] == -10.0  # verbatim
    assert score(["I brought 380 dollars, it's in my pocket."])["secret"] == -10.0  # distinctive words
    assert (
        score(["You idiot, shut up."])["social_rules"] == -6.0
        and score(["Fair enough."])["social_rules"] == 0
    )
    assert score(["Thank you, I appreciate it, please!"])["relationship"] > 0
    assert score(["You stupid moron!"])["relationship"] < 0
    assert (
        score(["Deal?", "Deal?", "Deal?"])["believability"]
        < score(["Deal?", "300 then.", "Cash now."])["believability"]
    )
    assert score(["Hi."])["knowledge"] > score(["Hi."], who=0)["knowledge"] >= 0
    # Every scenario, hostile, empty and repetitive talk: every score stays in its range.
    for sc in load_scenarios():
        for lines in (
            ["[leave]"],
            ["", ""],
            ["damn " * 40],
            ["please thank you " * 20] * 3,
            [sc.characters[0].secret],
        ):
            talk = [Utterance(i % 2, t) for i, t in enumerate(lines * 2)]
            for who in (0, 1):
                assert in_range(evaluator.score(sc, talk, who).scores), (sc.id, lines)


def test_model_evaluator_parses_json_and_repairs_garbage():
    scenario = load_scenarios([BIKE])[0]
    talk = [Utterance(0, "Firm price, $350."), Utterance(1, "Deal.")]
    scripted = [ScriptedEvaluator().score(scenario, talk, w) for w in (0, 1)]

    def judge(reply):
        return ModelEvaluator(ScriptedAgent([reply], name="judge"))

    good = json.dumps(
        {
            "believability": 8,
            "Relationship": 2,
            "knowledge": 3,
            "secret": 0,
            "social rules": -1,
            "financial": 4,
            "goal": 9,
        }
    )
    result = asyncio.run(judge(f"Sure:\n```json\n{good}\n```").evaluate(scenario, talk))
    assert result[0].scores["goal"] == 9 and result[0].scores["financial_and_material_benefits"] == 4
    assert result[0].flags == [] and result[0].source == "model:judge"
    for reply in ["lol no", "", "{not json", "[1, 2, 3]"]:
        result = asyncio.run(judge(reply).evaluate(scenario, talk))
        for got, fallback in zip(result, scripted, strict=True):
            assert got.flags == ["unparseable"] and got.scores == fallback.scores
    wild = asyncio.run(
        judge('{"goal": 99, "secret": 5, "relationship": "very good"}').evaluate(scenario, talk)
    )[0]
    assert wild.scores["goal"] == 10 and wild.scores["secret"] == 0 and in_range(wild.scores)
    assert {"clamped:goal", "clamped:secret", "missing:relationship"} <= set(wild.flags)
    assert wild.scores["relationship"] == scripted[0].scores["relationship"]
    assert (
        judge("believability: 7\ngoal = 6").parse("believability: 7\ngoal = 6", scripted[0]).scores["goal"]
        == 6
    )


def test_env_with_garbage_model_judge_gives_defined_scores_and_flags():
    env = SocialGoalEnv(max_turns=2, tasks=[BIKE], evaluator=ScriptedAgent(["nonsense"], name="judge"))
    (_, rewards, terminated, _, infos), _ = play(env, {"agent_0": ["firm price"], "agent_1": ["discount"]})
    assert all(terminated.values())
    for agent in ("agent_0", "agent_1"):
        assert in_range(infos[agent]["reward_components"]) and 0 <= rewards[agent] <= 1
        assert infos[agent]["evaluator_flags"] == ["unparseable"]
        assert infos[agent]["evaluator"] == "model:judge"


@pytest.mark.slow
def test_tiny_model_evaluator_completes():
    env = aligngym.make(ENV_ID, max_turns=2, evaluator="tiny", tasks=[BIKE])
    (_, rewards, terminated, _, infos), _ = play(env, {"agent_0": ["Hi"], "agent_1": ["Hello"]})
    env.close()
    assert all(terminated.values())
    for agent in ("agent_0", "agent_1"):
        assert in_range(infos[agent]["reward_components"]) and 0 <= rewards[agent] <= 1
        assert infos[agent]["evaluator"].startswith("model:")


def test_rollout_with_seat_map_writes_one_row_per_agent(tmp_path):
    out = tmp_path / "goal.jsonl"
    seats = {
        "agent_0": ScriptedAgent(["Hello!", "Thanks, bye [leave]"], name="a"),
        "agent_1": ScriptedAgent(["Hi."]),
    }
    summary = asyncio.run(aligngym.rollout(ENV_ID, seats, episodes=3, out=out, progress=False))
    rows = aligngym.read_trajectories(out)
    assert summary.written == 3 and summary.errors == 0 and len(rows) == 6
    assert sorted((r["episode"], r["agent_id"]) for r in rows) == [
        (e, a) for e in range(3) for a in ("agent_0", "agent_1")
    ]
    assert all(r["turns"] == 2 and in_range(r["reward_components"]) for r in rows)
    assert {r["info"]["episode"]["scenario_id"] for r in rows} <= {s.id for s in load_scenarios()}
