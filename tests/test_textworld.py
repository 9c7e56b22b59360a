"""aligngym/TextWorld-v0: seeded worlds, rules, partial observability, admissible actions and the expert."""

from __future__ import annotations

import copy
import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import aligngym  # noqa: F401  (registers the envs)
from aligngym.envs.textworld import REFUSAL, TextWorldEnv, extract_command, parse_command
from aligngym.envs.textworld_expert import plan, solve
from aligngym.envs.textworld_gen import INVENTORY, Goal, box_index

LEVELS = ("easy", "medium", "hard")


def make(**kwargs) -> TextWorldEnv:
    return gym.make("aligngym/TextWorld-v0", **kwargs).unwrapped


def run(env: TextWorldEnv, commands: list[str]) -> tuple[str, dict]:
    """Step through ``commands``, asserting each is valid; return the last observation and info."""
    obs, info = "", {}
    for command in commands:
        obs, _, _, _, info = env.step(command)
        assert info["reward_components"]["invalid"] == 0.0, (command, obs)
    return obs, info


def test_same_seed_same_world_and_seeds_differ():
    env = make(difficulty="hard")
    firsts = []
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        again, info2 = env.reset(seed=seed)
        assert obs == again and info["admissible_actions"] == info2["admissible_actions"]
        assert env.expert_plan() == solve(env)
        firsts.append(obs)
    assert len(set(firsts)) == 10


@pytest.mark.parametrize("level", LEVELS)
def test_expert_solves_seeded_worlds(level):
    env = make(difficulty=level)
    solved = 0
    for seed in range(100):
        _, info = env.reset(seed=seed)
        commands = env.expert_plan()
        total, terminated, success = 0.0, False, 0.0
        for command in commands:
            # The admissible list must offer the expert's next move, and re-planning must agree with it.
            assert command in info["admissible_actions"] and env.expert_plan()[0] == command
            _, reward, terminated, truncated, info = env.step(command)
            total += reward
            assert info["reward_components"]["invalid"] == 0.0
            success = info["reward_components"]["success"]
            if terminated or truncated:
                break
        if terminated and success == 1.0 and total == pytest.approx(1.0 - 0.01 * len(commands)):
            assert info["reward_components"]["steps"] == len(commands)
            solved += 1
    assert solved >= 95, f"expert solved {solved}/100 {level} worlds"


def test_step_penalty_kwarg():
    env = make(difficulty="medium", step_penalty=0.0)
    env.reset(seed=3)
    rewards = [env.step(c)[1] for c in env.expert_plan()]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0


@pytest.mark.parametrize("level", LEVELS)
def test_doing_nothing_never_succeeds(level):
    env = make(difficulty=level, max_turns=20)
    for seed in range(10):
        env.reset(seed=seed)
        for action in ["look"] * 19 + [""]:
            _, reward, terminated, truncated, info = env.step(action)
            assert not terminated and info["reward_components"]["success"] == 0.0
            assert reward == pytest.approx(-0.01)
        assert truncated


def test_invalid_commands_are_refused_in_world():
    env = make(difficulty="medium")
    first, _ = env.reset(seed=5)
    room_view = first.split("\n\n")[-1]
    for action in ["xyzzy", "take unicorn", "go up", "put", "open apple", "drop red key", "unlock door"]:
        obs, reward, terminated, _, info = env.step(action)
        assert obs.startswith(REFUSAL) and obs.endswith(room_view), (action, obs)
        assert info["reward_components"]["invalid"] == 1.0 and reward == pytest.approx(-0.01)
        assert not terminated
    obs, *_, info = env.step("look")
    assert not obs.startswith(REFUSAL) and info["reward_components"]["invalid"] == 0.0


def test_generation_matches_difficulty():
    env = make()
    for seed in range(30):
        for level, rooms, locked_doors, locked_boxes in [
            ("easy", (1, 2), 0, 0),
            ("medium", (3, 4), None, None),
            ("hard", (5, 6), 1, 1),
        ]:
            env.reset(seed=seed, options={"difficulty": level})
            w = env.world
            assert w.level == level and rooms[0] <= len(w.rooms) <= rooms[1]
            doors, boxes = sum(w.start.door_locked), sum(w.start.box_locked)
            if locked_doors is None:
                assert doors + boxes == 1
            else:
                assert (doors, boxes) == (locked_doors, locked_boxes)
            assert not w.goal.achieved(w.start)
    assert TextWorldEnv(level=2).difficulty == "hard" and TextWorldEnv(difficulty=0).difficulty == "easy"
    with pytest.raises(ValueError):
        TextWorldEnv(difficulty="impossible")


def _hard_world_with_reachable_distractor(env):
    """A hard seed whose fitting-nothing key can be fetched without unlocking anything."""
    for seed in range(100):
        env.reset(seed=seed)
        w = env.world
        lock_colours = {d.colour for d in w.doors} | {b.colour for b in w.boxes}
        for i, item in enumerate(w.items):
            if item.kind == "key" and item.colour not in lock_colours:
                fetch = plan(w, w.start, Goal("take", "", item=i))
                if fetch and not any(c.startswith("unlock") for c in fetch):
                    return i
    raise AssertionError("no hard seed with a reachable distractor key")


def test_locked_door_needs_the_right_key():
    env = make(difficulty="hard")
    wrong = _hard_world_with_reachable_distractor(env)
    w = env.world
    door = w.start.door_locked.index(True)
    near, far = w.doors[door].rooms  # generation grows from the start room, so the near side comes first
    direction = next(d for d, r in w.exits[near].items() if r == far)
    right = w.key_for(w.doors[door].colour)
    run(env, plan(w, env.state, Goal("take", "", item=wrong)))
    run(env, plan(w, env.state, Goal("take", "", item=right)))
    run(env, plan(w, env.state, Goal("go", "", room=near)))
    door_name, wrong_name = w.doors[door].name, w.items[wrong].name

    obs, *_, info = env.step(f"go {direction}")
    assert obs.startswith(f"{REFUSAL} The {door_name} is locked.") and env.state.room == near
    assert info["reward_components"]["invalid"] == 1.0
    assert f"open {door_name}" not in info["admissible_actions"]
    obs, *_, info = env.step(f"unlock the {door_name} with the {wrong_name}")
    assert obs.startswith(REFUSAL) and "does not fit" in obs and info["reward_components"]["invalid"] == 1.0
    assert env.step(f"go {direction}")[0].startswith(REFUSAL)
    run(env, [f"unlock {door_name} with {w.items[right].name}"])
    # Unlocked is not yet open.
    assert env.step(f"go {direction}")[0].startswith(f"{REFUSAL} The {door_name} is closed.")
    obs, _ = run(env, [f"open {door_name}", f"go {direction}"])
    assert env.state.room == far and far.title() in obs


def test_partial_observability():
    env = make(difficulty="medium")
    checked = 0
    for seed in range(20):
        first, _ = env.reset(seed=seed)
        w = env.world
        elsewhere = [
            i
            for i, loc in enumerate(w.start.loc)
            if loc in w.rooms and loc != w.start.room and w.items[i].name not in first
        ]
        if not elsewhere:
            continue
        item = w.items[elsewhere[0]]
        assert item.name not in first
        obs, _ = run(env, plan(w, env.state, Goal("go", "", room=w.start.loc[elsewhere[0]])))
        assert item.name in obs
        checked += 1
    assert checked >= 5


def test_contents_of_closed_containers_are_hidden():
    env = make(difficulty="easy")
    for seed in range(50):
        first, _ = env.reset(seed=seed)
        w = env.world
        hidden = [
            i
            for i, loc in enumerate(w.start.loc)
            if box_index(loc) is not None and not w.start.box_open[box_index(loc)]
        ]
        hidden = [i for i in hidden if w.boxes[box_index(w.start.loc[i])].room == w.start.room]
        if hidden and w.items[hidden[0]].name not in first:
            box = w.boxes[box_index(w.start.loc[hidden[0]])]
            obs, _ = run(env, [f"open {box.name}"])
            assert w.items[hidden[0]].name in obs
            return
    raise AssertionError("no easy seed with an object inside a closed container in the start room")


@pytest.mark.parametrize("level", LEVELS)
def test_admissible_actions_are_all_valid(level):
    env = make(difficulty=level)
    rng = random.Random(level)
    for seed in range(6):
        _, info = env.reset(seed=seed)
        for _ in range(12):
            actions = info["admissible_actions"]
            assert actions == sorted(set(actions)) and {"look", "inventory"} <= set(actions)
            for action in actions:
                probe = copy.deepcopy(env)
                obs, *_, probe_info = probe.step(action)
                assert probe_info["reward_components"]["invalid"] == 0.0 and not obs.startswith(REFUSAL)
            _, _, terminated, truncated, info = env.step(rng.choice(actions))
            if terminated or truncated:
                break


def test_expert_replans_after_wandering():
    env = make(difficulty="hard")
    rng = random.Random(0)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        for _ in range(15):  # random valid moves, including dropping keys in odd places
            env.step(rng.choice(info["admissible_actions"]))
            info = {"admissible_actions": env.admissible_actions()}
        commands = env.expert_plan()
        assert commands
        run(env, commands[:-1])
        *_, terminated, _, info = env.step(commands[-1])
        assert terminated and info["reward_components"]["success"] == 1.0


def test_command_extraction_and_parsing():
    assert extract_command("I think the key is here.\nLet me grab it:\n`take the red key`\nDone!") == (
        "take the red key"
    )
    assert extract_command("Plan: explore.\n```\nlook\ngo north\n```") == "go north"
    assert extract_command("First I open it.\nopen chest\nThat should work.") == "open chest"
    assert extract_command("no command here at all") is None and extract_command("``````") is None
    assert parse_command("  GO\u00a0 North. ") == parse_command("n")
    assert parse_command("Put the  red ball INTO the green chest") == parse_command(
        "put red ball in green chest"
    )
    assert parse_command("pick up a key").verb == "take" and parse_command("look at door").verb == "examine"
    assert parse_command("I will go north") is None  # prose is not a command


def test_reply_with_reasoning_is_executed():
    env = make(difficulty="hard")
    env.reset(seed=1)
    first = env.expert_plan()[0]
    obs, *_, info = env.step(f"I should start with this.\n`{first.upper()}`")
    assert info["command"] == first.upper() and info["reward_components"]["invalid"] == 0.0
    assert not obs.startswith(REFUSAL)


def test_taken_objects_move_to_the_inventory():
    env = make(difficulty="easy")
    for seed in range(20):
        _, info = env.reset(seed=seed)
        takes = [a for a in info["admissible_actions"] if a.startswith("take ")]
        if takes:
            obs, _ = run(env, [takes[0]])
            name = takes[0][5:]
            i = next(k for k, it in enumerate(env.world.items) if it.name == name)
            assert (
                env.state.loc[i] == INVENTORY
                and "carrying" in obs
                and f"drop {name}" in env.admissible_actions()
            )
            return
    raise AssertionError("no easy seed with an object to take")


def test_check_env_via_gym_make():
    env = gym.make("aligngym/TextWorld-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert "Your goal:" in obs and "Commands:" in obs and info["admissible_actions"]
    env.close()


def test_garbage_replies_never_raise():
    env = make(difficulty="hard", max_turns=1000)
    env.reset(seed=0)
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz `\n.,:-" + "\u00a0\u3000é✓"
    for _ in range(300):
        reply = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        obs, *_, info = env.step(reply)
        assert isinstance(obs, str) and info["reward_components"]["invalid"] in (0.0, 1.0)
