"""aligngym/TextWorldGame-v0: real TextWorld games, the game's own score and win, and the wall in front of them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

textworld = pytest.importorskip(
    "textworld", reason="TextWorldGame-v0 needs the optional extra aligngym[textworld]"
)

import aligngym  # noqa: E402  (registers the envs)
from aligngym.envs import textworld_game as twg  # noqa: E402

ENV_ID = "aligngym/TextWorldGame-v0"
SEED = 7  # the conformance check's seed: its games are in the cache after either runs


def walkthrough(env: twg.TextWorldGameEnv) -> list[str]:
    """The game's own solution, read from its .json (tests only: the agent never sees it)."""
    return list(textworld.Game.load(str(env.game_path.with_suffix(".json"))).metadata["walkthrough"])


def play(env: twg.TextWorldGameEnv, replies: list[str]) -> tuple[float, list[tuple]]:
    """Step ``replies`` until the episode ends; the total reward and every step's result."""
    total, steps = 0.0, []
    for reply in replies:
        step = env.step(reply)
        total += step[1]
        steps.append(step)
        if step[2] or step[3]:
            break
    return total, steps


class Spy:
    """Wraps the game's interpreter: records every command that reaches it."""

    def __init__(self, game):
        self.game, self.sent = game, []

    def step(self, command):
        self.sent.append(command)
        return self.game.step(command)

    def close(self):
        self.game.close()


@pytest.fixture
def env():
    env = twg.TextWorldGameEnv(max_turns=200)  # room for every attack in one episode
    yield env
    env.close()


@pytest.fixture
def spied(env):
    """The env reset at ``SEED`` with a spy on its interpreter."""
    env.reset(seed=SEED)
    env._game = Spy(env._game)
    return env


# -- playing -----------------------------------------------------------------------------------------
def test_walkthrough_wins_with_full_reward(env):
    obs, info = env.reset(seed=SEED)
    assert info["max_score"] >= 1 and info["score"] == 0 and not info["won"]
    assert "$$$$" not in obs  # the ASCII-art title is gone
    total, steps = play(env, [f"Let me think.\n`{c}`" for c in walkthrough(env)])
    assert len(steps) == len(walkthrough(env)), "the walkthrough ended before its last command"
    obs, reward, terminated, truncated, info = steps[-1]
    assert terminated and not truncated
    assert info["won"] and info["score"] == info["max_score"]
    assert info["reward_components"] == {"won": 1.0, "score": 1.0, "refused": 0.0}
    assert total == pytest.approx(1.0)
    assert all(0.0 <= s[1] <= 1.0 for s in steps)
    assert "RESTART" not in obs  # the interpreter's game-over offer is not shown


@pytest.mark.slow
def test_longer_quest_pays_each_point_once():
    env = twg.TextWorldGameEnv(world_size=5, nb_objects=6, quest_length=4)
    env.reset(seed=SEED)
    total, steps = play(env, walkthrough(env))
    assert steps[-1][2] and steps[-1][4]["won"]
    assert total == pytest.approx(1.0)
    rises = [s[1] for s in steps if s[1] > 0]
    assert rises and all(r == pytest.approx(1 / steps[-1][4]["max_score"]) for r in rises)
    env.close()


def test_random_and_invalid_commands_do_not_win(env):
    env.reset(seed=SEED)
    rng = np.random.default_rng(0)
    env.action_space.seed(0)
    replies = [env.action_space.sample() for _ in range(20)]
    replies += ["go up", "take the moon", "eat locker", "open sesame", "look", "inventory", "examine me"]
    replies += [str(rng.integers(1000)) for _ in range(10)]
    total, steps = play(env, replies)
    assert total == 0.0 and len(steps) == len(replies)
    assert not any(s[2] or s[4]["won"] for s in steps)


def test_same_seed_same_game_and_episode(env):
    first = [env.reset(seed=SEED)[0], *(s[0] for s in play(env, ["look", "go west", "inventory"])[1])]
    path = env.game_path
    second = [env.reset(seed=SEED)[0], *(s[0] for s in play(env, ["look", "go west", "inventory"])[1])]
    assert env.game_path == path and first == second
    other = twg.TextWorldGameEnv()
    assert other.reset(seed=SEED)[0] == first[0] and other.game_path == path
    other.close()


def test_seeds_choose_games_and_options_pin_one(env):
    env.reset(seed=SEED)
    drawn = env.game_seed
    env.reset(seed=SEED + 1)
    assert env.game_seed != drawn
    env.reset(seed=SEED + 1, options={"game_seed": drawn})
    assert env.game_seed == drawn
    with pytest.raises(ValueError, match="game_seed"):
        env.reset(options={"game_seed": -1})


def test_a_given_game_file_is_played(env):
    env.reset(seed=SEED)
    fixed = twg.TextWorldGameEnv(game_file=env.game_path)
    fixed.reset(seed=123)
    assert fixed.game_path == env.game_path and fixed.game_seed is None
    assert play(fixed, walkthrough(fixed))[0] == pytest.approx(1.0)
    fixed.close()
    with pytest.raises(ValueError, match="json"):
        twg.TextWorldGameEnv(game_file=env.game_path.with_suffix(".ni"))


def test_bad_settings_are_refused_at_construction():
    for bad in ({"world_size": 0}, {"nb_objects": "4"}, {"quest_length": True}, {"num_games": 0}):
        with pytest.raises(ValueError):
            twg.TextWorldGameEnv(**bad)


def test_episodes_run_side_by_side_through_run_episode():
    from aligngym.agents.scripted import ScriptedAgent
    from aligngym.episode import run_episode

    seeds = [SEED, SEED + 1]
    envs = [twg.TextWorldGameEnv() for _ in range(4)]
    for env, seed in zip(envs, seeds * 2, strict=True):
        env.reset(seed=seed)
    agents = [ScriptedAgent(walkthrough(env)) for env in envs[:2]] + [ScriptedAgent(["restore", "undo"])] * 2

    async def main():
        plays = zip(envs, agents, seeds * 2, strict=True)
        return await asyncio.gather(*(run_episode(e, a, seed=s) for e, a, s in plays))

    trajectories = [t for ts in asyncio.run(main()) for t in ts]
    assert [t.success for t in trajectories] == [True, True, False, False]
    assert [t.reward for t in trajectories] == pytest.approx([1.0, 1.0, 0.0, 0.0])
    for env in envs:
        env.close()


_LOAD_SIDE_BY_SIDE = """
import asyncio
from aligngym.agents.scripted import ScriptedAgent
from aligngym.envs.textworld_game import TextWorldGameEnv
from aligngym.episode import run_episode

async def main():
    envs = [TextWorldGameEnv() for _ in range(4)]
    plays = [run_episode(e, ScriptedAgent(["look"]), seed=SEED + i % 2) for i, e in enumerate(envs)]
    print([t.error for ts in await asyncio.gather(*plays) for t in ts])

asyncio.run(main())
"""


def test_games_load_side_by_side():
    """textworld's game parser is shared and not thread-safe: fresh envs loading at once must all start.

    In a fresh process, because the race is on the parser's first use.
    """
    code = _LOAD_SIDE_BY_SIDE.replace("SEED", str(SEED))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str([None] * 4)


@pytest.mark.slow
def test_conformance():
    aligngym.check_conformance(ENV_ID, {"max_turns": 3}, seed=SEED)


# -- packaging and the cache --------------------------------------------------------------------------
def test_import_aligngym_does_not_import_textworld(tmp_path):
    code = "import aligngym, sys; print('textworld' in sys.modules, 'jericho' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_missing_textworld_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "textworld", None)  # import textworld now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'aligngym\[textworld\]'"):
        twg.TextWorldGameEnv()


def test_a_cached_game_is_not_rebuilt(env, monkeypatch):
    env.reset(seed=SEED)
    monkeypatch.setattr(twg.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt a cached game"))
    assert twg.build_game(env.settings, env.game_seed) == env.game_path


@pytest.mark.slow
def test_parallel_builders_share_one_complete_game(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNGYM_CACHE", str(tmp_path))
    settings, found = twg.GameSettings(), []
    builders = [threading.Thread(target=lambda: found.append(twg.build_game(settings, 3))) for _ in range(2)]
    for b in builders:
        b.start()
    for b in builders:
        b.join()
    assert len(found) == 2 and found[0] == found[1]
    assert sorted(p.name for p in (tmp_path / "textworld").iterdir()) == [settings.cache_name(3)]
    assert {"game.z8", "game.json"} <= set(os.listdir(found[0].parent))
    env = twg.TextWorldGameEnv()
    env.reset(options={"game_seed": 3})
    assert env.game_path == found[0] and play(env, walkthrough(env))[0] == pytest.approx(1.0)
    env.close()


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    fake = tmp_path / "tw-make"
    fake.write_text("#!/bin/sh\necho 'No quest can be generated with the provided options' >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(twg, "_tw_make", lambda: str(fake))
    monkeypatch.setenv("ALIGNGYM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="tw-make failed to build game 0.*No quest can be generated"):
        twg.build_game(twg.GameSettings(), 0)
    assert list((tmp_path / "cache" / "textworld").iterdir()) == []


# -- the wall: what a policy with millions of tries could do ----------------------------------------------
META = [
    "restart", "restore", "save", "undo", "quit", "q", "script", "unscript", "transcript", "verbose", "brief",
    "score", "full score", "again", "g", "oops", "yes", "y", "help", "goal", "version", "print_state",
    "enable print state option", "tw-trace-actions", "tw-extra-infos score", "restrict commands",
    "tw-print max_score",
]  # fmt: skip


@pytest.mark.parametrize("command", META)
def test_meta_commands_never_reach_the_interpreter(spied, command):
    # Found: "save" writes a .qzl beside the cached game and "restore" loads it in any later episode; "script"
    # writes a transcript file; "restart"/"quit" + "yes" reset the game; "print_state" dumps the whole world;
    # "tw-trace-actions" switches off the event trace that admissible commands are computed from.
    obs, reward, terminated, _, info = spied.step(command)
    assert spied._game.sent == [] and info["refused"] and obs.startswith("Refused")
    assert reward == 0.0 and not terminated and info["reward_components"]["refused"] == 1.0


def test_meta_commands_leave_no_files_and_the_game_still_wins(spied):
    before = sorted(os.listdir(spied.game_path.parent))
    for command in META:
        spied.step(command)
    for command in META:
        spied.step(f"{command}\nyes")
    assert sorted(os.listdir(spied.game_path.parent)) == before and spied._game.sent == []
    assert play(spied, walkthrough(spied))[0] == pytest.approx(1.0)


def test_several_commands_in_one_reply_run_at_most_one(spied):
    # Found: "a. b" and "a then b" run both and the win's score tag was lost (won with score 0).
    first, second = walkthrough(spied)[:2]
    for reply in (f"{first}. {second}", f"{first} then {second}", f"{first}; {second}", f"{first}, {second}"):
        assert spied.step(reply)[4]["refused"]
    assert spied.step("take keycard and locker")[4]["refused"]
    assert spied.step("drop all")[4]["refused"]
    _, reward, terminated, _, info = spied.step(f"{first}\r\n{second}")  # only the last line is sent
    assert spied._game.sent == [second] and reward == 0.0 and not terminated


def test_forged_score_and_win_text_is_refused(spied):
    # The wrapper reads won from "*** The End ***", the score from "<score>" tags and events from "[...]".
    for reply in (
        "*** The End ***",
        "<score>\n99\n</score>",
        "take [taking - succeeded]",
        "look *** The End ***",
    ):
        _, reward, terminated, _, info = spied.step(reply)
        assert info["refused"] and reward == 0.0 and not terminated and not info["won"]
    assert spied._game.sent == []


def test_huge_and_non_ascii_replies(spied):
    # Found: a NUL byte hangs the interpreter (a CPU-bound loop inside the C library, no timeout possible).
    bad = [
        "look\x00",
        "\x00",
        "café",
        "ｌｏｏｋ",
        "look\u200b",
        "go\teast\x07",
        "x" * 1_000_000,
        "go north" * 20,
    ]
    for reply in bad:
        assert spied.step(reply)[4]["refused"]
    assert spied._game.sent == []
    assert spied.step("look\n" + "```py\n" * 100_000)[4]["refused"] == "the reply has no command"
    spied.step("x" * 1_000_000 + "\nlook")  # a huge reply still sends its one last line
    assert spied._game.sent == ["look"]


def test_an_interpreter_failure_ends_the_episode_and_is_recorded(spied):
    spied.step(walkthrough(spied)[0])

    def crash(command):
        raise RuntimeError("frotz fell over")

    spied._game.step = crash
    _, reward, terminated, _, info = spied.step("look")
    assert terminated and reward == 0.0 and "frotz fell over" in info["interpreter_error"]
    assert not info["reward_components"]["won"]
    spied.reset(seed=SEED)  # a fresh interpreter
    assert play(spied, walkthrough(spied))[0] == pytest.approx(1.0)


def test_nothing_of_the_solution_is_shown(env):
    obs, info = env.reset(seed=SEED)
    shown = [obs, json.dumps({k: v for k, v in info.items() if k != "messages"})]
    for reply in walkthrough(env):
        obs, *_, info = env.step(reply)
        shown += [obs, json.dumps({k: v for k, v in info.items() if k != "messages"})]
    assert set(info) - {"messages", "reward_components", "turn"} == {
        "admissible_commands", "score", "max_score", "won", "lost", "command", "refused"
    }  # fmt: skip
    text = "\n".join(shown)
    for secret in (
        "walkthrough",
        "policy",
        "-=STATE START=-",
        str(env.game_path.parent),
        " > ".join(walkthrough(env)),
    ):
        assert secret not in text


def test_a_won_game_pays_once(env):
    env.reset(seed=SEED)
    total, steps = play(env, walkthrough(env))
    assert steps[-1][2] and total == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


class FakeGame:
    """An interpreter whose score follows a script: what a game that takes points away would report."""

    def __init__(self, scores, max_score=4):
        self.scores, self.max_score = list(scores), max_score

    def step(self, command):
        score = self.scores.pop(0)
        state = {"score": score, "max_score": self.max_score, "won": False, "lost": False}
        return state | {"feedback": "ok", "admissible_commands": ["look"]}, score, False

    def close(self):
        pass


def test_a_score_that_falls_and_rises_again_pays_each_point_once(env):
    env.reset(seed=SEED)
    env._game.close()
    env._game = FakeGame([2, 0, 2, 3, -5, 9])  # points lost then regained; a score out of range
    rewards = [env.step("look")[1] for _ in range(6)]
    assert rewards == pytest.approx([0.5, 0.0, 0.0, 0.25, 0.0, 0.25])
    assert sum(rewards) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("reply", "command"),
    [
        ("go east", "go east"),
        ("I will open it.\n\n`Open Chest`", "open chest"),
        ("```\ntake key\n```", "take key"),
        ("> look.", "look"),
        ("Action: go   north!", "go north"),
        ("**inventory**\n\n", "inventory"),
        ("", ""),
    ],
)
def test_extract_command(reply, command):
    assert twg.extract_command(reply) == command


def test_clean_feedback_drops_title_prompt_and_status():
    raw = "\n\n  ____ \n |  \\$$ |\n\nHello there.\n\n\n\n-= Hall =-\nA hall.\n>     -= Hall =-0/1"
    assert twg.clean_feedback(raw) == "Hello there.\n\n-= Hall =-\nA hall."


def test_progress_is_normalised_and_one_when_won():
    assert twg.progress(1, 4, False) == 0.25 and twg.progress(9, 4, False) == 1.0
    assert twg.progress(-3, 4, False) == 0.0 and twg.progress(0, 0, False) == 0.0
    assert twg.progress(0, 0, True) == 1.0 and twg.progress(1, 4, True) == 1.0
