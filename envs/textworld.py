"""aligngym/TextWorld-v0: an embodied text world (BabyAI-Text / TextWorld style) with a scripted expert.

Rooms joined by exits, doors and containers that open and may be locked (a key opens locks of its colour),
objects to carry, and a goal (take an object, put it in a container, go to a room, open a door and go
through). The agent sees only the current room and its inventory. Reward per step: 1.0 when the goal is
achieved (ending the episode) minus ``step_penalty``; components ``success``, ``steps`` and ``invalid``.
The rules are the pure function :func:`step_world`; the expert (:func:`solve`) plans with those same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from .base import StepResult, TextEnv
from .textworld_gen import (
    DIRECTIONS,
    INVENTORY,
    LEVEL_NAMES,
    State,
    World,
    box_index,
    box_loc,
    generate,
)

REFUSAL = "You can't do that."
GRAMMAR = (
    "go <north|south|east|west> (or n/s/e/w), look, inventory, take <object>, drop <object>, "
    "put <object> in <container>, open <container|door>, close <container|door>, "
    "unlock <container|door> with <key>, examine <object>"
)
_ARTICLES = {"the", "a", "an", "some", "my"}
_DIR_WORDS = {**{d: d for d in DIRECTIONS}, "n": "north", "s": "south", "e": "east", "w": "west"}
_VERBS = {
    **dict.fromkeys(("take", "get", "grab"), "take"),
    "drop": "drop",
    **dict.fromkeys(("put", "place", "insert"), "put"),
    "open": "open",
    **dict.fromkeys(("close", "shut"), "close"),
    "unlock": "unlock",
    **dict.fromkeys(("examine", "x", "inspect"), "examine"),
}
_SEPARATORS = {"put": ("in", "into", "inside"), "unlock": ("with", "using")}
Ref = tuple[str, int]  # ("item" | "box" | "door", index)


@dataclass(frozen=True)
class Command:
    """A parsed command: a canonical verb and its (still unresolved) object phrases."""

    verb: str
    obj: str = ""
    target: str = ""


@dataclass(frozen=True)
class Outcome:
    """The result of applying one command: the next state, what the player is told, and whether it was valid."""

    state: State
    message: str
    valid: bool


# -- parsing ----------------------------------------------------------------------------------------
def parse_command(line: str) -> Command | None:
    """The command a line expresses, or None when it does not look like a command at all."""
    words = [w for w in re.sub(r"[^a-z0-9]+", " ", line.lower()).split() if w not in _ARTICLES]
    while words and (words[0] in ("command", "action") or words[0].isdigit()):
        words = words[1:]  # "Action: go north", "1. go north"
    if not words:
        return None
    head, rest = words[0], words[1:]
    if head in _DIR_WORDS and not rest:
        return Command("go", _DIR_WORDS[head])
    if head in ("go", "walk", "move", "head"):
        rest = [w for w in rest if w not in ("to", "towards")]
        return Command("go", _DIR_WORDS.get(" ".join(rest), " ".join(rest)))
    if words in (["look"], ["l"], ["look", "around"]):
        return Command("look")
    if words in (["inventory"], ["i"], ["inv"]):
        return Command("inventory")
    if head in ("look", "pick", "put") and rest[:1] == [{"look": "at", "pick": "up", "put": "down"}[head]]:
        head, rest = {"look": "examine", "pick": "take", "put": "drop"}[head], rest[1:]
    verb = _VERBS.get(head)
    if verb is None:
        return None
    if verb in _SEPARATORS:
        cut = next((k for k, w in enumerate(rest) if w in _SEPARATORS[verb]), 0)
        if not 0 < cut < len(rest) - 1:
            return Command("malformed", verb)
        return Command(verb, " ".join(rest[:cut]), " ".join(rest[cut + 1 :]))
    return Command(verb, " ".join(rest)) if rest else Command("malformed", verb)


def extract_command(text: str) -> str | None:
    """The command line of a reply: the last command in backticks, else the last line that looks like one."""
    quoted = [m.group(1) or m.group(2) or "" for m in re.finditer(r"```(.*?)```|`([^`\n]+)`", text, re.S)]
    for block in quoted[::-1]:
        for line in block.splitlines()[::-1]:
            if parse_command(line) is not None:
                return line.strip()
    return next((ln.strip() for ln in text.splitlines()[::-1] if parse_command(ln) is not None), None)


# -- scope and descriptions -------------------------------------------------------------------------
def _name(w: World, ref: Ref) -> str:
    kind, i = ref
    return (w.items if kind == "item" else w.boxes if kind == "box" else w.doors)[i].name


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _items_at(s: State, loc: str) -> list[int]:
    return [i for i, where in enumerate(s.loc) if where == loc]


def _visible(w: World, s: State) -> list[Ref]:
    """Everything the player can refer to: this room's items, boxes and doors, open boxes' contents, inventory."""
    boxes = [j for j, b in enumerate(w.boxes) if b.room == s.room]
    items = _items_at(s, s.room) + _items_at(s, INVENTORY)
    items += [i for j in boxes if s.box_open[j] for i in _items_at(s, box_loc(j))]
    doors = sorted({w.door_at[(s.room, d)] for d in w.exits[s.room] if (s.room, d) in w.door_at})
    return [("item", i) for i in items] + [("box", j) for j in boxes] + [("door", d) for d in doors]


def _box_state(w: World, s: State, j: int) -> str:
    if not s.box_open[j]:
        return "closed, locked" if s.box_locked[j] else "closed"
    inside = [_a(w.items[i].name) for i in _items_at(s, box_loc(j))]
    return f"open, containing {', '.join(inside)}" if inside else "open, empty"


def describe(w: World, s: State) -> str:
    """What the player perceives: the current room, its exits and the inventory (nothing beyond)."""
    things = [_a(w.items[i].name) for i in _items_at(s, s.room)]
    things += [f"{_a(b.name)} ({_box_state(w, s, j)})" for j, b in enumerate(w.boxes) if b.room == s.room]
    exits = []
    for d in DIRECTIONS:
        if d not in w.exits[s.room]:
            continue
        door = w.door_at.get((s.room, d))
        if door is None:
            exits.append(f"{d} to the {w.exits[s.room][d]}")
        elif s.door_open[door]:
            exits.append(f"{d} through an open {w.doors[door].name} to the {w.exits[s.room][d]}")
        else:
            state = "locked" if s.door_locked[door] else "closed"
            exits.append(f"{d}: {_a(w.doors[door].name)} ({state})")
    held = [_a(w.items[i].name) for i in _items_at(s, INVENTORY)]
    return "\n".join(
        [
            f"-- {s.room.title()} --",
            f"You see {', '.join(things)}." if things else "You see nothing of interest here.",
            f"Exits: {'; '.join(exits)}." if exits else "There are no exits.",
            f"You are carrying {', '.join(held)}." if held else "You are carrying nothing.",
        ]
    )


# -- rules ------------------------------------------------------------------------------------------
def _refuse(s: State, hint: str) -> Outcome:
    return Outcome(s, f"{REFUSAL} {hint}", False)


def _set(values: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
    return values[:i] + (value,) + values[i + 1 :]


def _find(w: World, s: State, phrase: str, preferred: list[Ref]) -> tuple[Ref | None, str]:
    """Resolve ``phrase`` ("red key", "key") among ``preferred`` refs, falling back on anything visible."""
    words = phrase.split()
    for pool in (preferred, _visible(w, s)):
        hits = [r for r in pool if words in ([_name(w, r).split()[1]], _name(w, r).split())]
        if len(hits) == 1:
            return hits[0], ""
        if hits:
            return None, f"Which do you mean: {' or '.join('the ' + _name(w, r) for r in hits)}?"
    return None, f"You don't see any {phrase} here."


def _lock_of(s: State, ref: Ref) -> tuple[bool, bool]:
    """(is open, is locked) of a door or box."""
    kind, i = ref
    return (s.door_open[i], s.door_locked[i]) if kind == "door" else (s.box_open[i], s.box_locked[i])


def _with_lock(s: State, ref: Ref, is_open: bool, locked: bool) -> State:
    kind, i = ref
    if kind == "door":
        return replace(s, door_open=_set(s.door_open, i, is_open), door_locked=_set(s.door_locked, i, locked))
    return replace(s, box_open=_set(s.box_open, i, is_open), box_locked=_set(s.box_locked, i, locked))


def _examine(w: World, s: State, ref: Ref) -> str:
    kind, i = ref
    name = _name(w, ref)
    if kind == "door":
        state = "open" if s.door_open[i] else "locked" if s.door_locked[i] else "closed"
        way = next(d for d in w.exits[s.room] if w.door_at.get((s.room, d)) == i)
        return f"The {name} leads {way} to the {w.exits[s.room][way]}. It is {state}."
    if kind == "box":
        return f"The {name} is {_box_state(w, s, i)}."
    where = s.loc[i]
    place = "in your hands" if where == INVENTORY else "on the floor"
    place = f"in the {w.boxes[box_index(where)].name}" if box_index(where) is not None else place
    fits = f" It opens {w.items[i].colour} locks." if w.items[i].kind == "key" else ""
    return f"It is {_a(name)}, {place}.{fits}"


def step_world(w: World, s: State, line: str | None) -> Outcome:
    """Apply one command line to state ``s`` (pure: ``s`` is not changed). Never raises on bad input."""
    cmd = parse_command(line) if line else None
    if cmd is None:
        return _refuse(s, "I don't understand that. Reply with one command, e.g. `look` or `go north`.")
    if cmd.verb == "malformed":
        return _refuse(s, f"That is not a complete command. Commands: {GRAMMAR}.")
    if cmd.verb in ("look", "inventory"):
        return Outcome(s, "You look around." if cmd.verb == "look" else "You check what you carry.", True)
    if cmd.verb == "go":
        if cmd.obj not in DIRECTIONS:
            return _refuse(s, f"'{cmd.obj}' is not a direction (north, south, east or west).")
        if cmd.obj not in w.exits[s.room]:
            return _refuse(s, f"There is no exit {cmd.obj} of the {s.room}.")
        door = w.door_at.get((s.room, cmd.obj))
        if door is not None and not s.door_open[door]:
            why = "locked" if s.door_locked[door] else "closed"
            return _refuse(s, f"The {w.doors[door].name} is {why}.")
        nxt = w.exits[s.room][cmd.obj]
        return Outcome(replace(s, room=nxt), f"You go {cmd.obj} into the {nxt}.", True)

    visible = _visible(w, s)
    held = [r for r in visible if r[0] == "item" and s.loc[r[1]] == INVENTORY]
    openable = [r for r in visible if r[0] != "item"]
    preferred = {
        "take": [r for r in visible if r[0] == "item" and r not in held],
        "drop": held,
        "put": held,
        "examine": visible,
    }
    ref, err = _find(w, s, cmd.obj, preferred.get(cmd.verb, openable))
    if ref is None:
        return _refuse(s, err)
    name = _name(w, ref)
    if cmd.verb == "examine":
        return Outcome(s, _examine(w, s, ref), True)
    if cmd.verb == "take":
        if ref[0] != "item":
            return _refuse(s, f"The {name} cannot be carried.")
        if ref in held:
            return _refuse(s, f"You already have the {name}.")
        j = box_index(s.loc[ref[1]])
        source = f" from the {w.boxes[j].name}" if j is not None else ""
        return Outcome(replace(s, loc=_set(s.loc, ref[1], INVENTORY)), f"You take the {name}{source}.", True)
    if cmd.verb in ("drop", "put") and ref not in held:
        return _refuse(s, f"You are not carrying the {name}.")
    if cmd.verb == "drop":
        return Outcome(replace(s, loc=_set(s.loc, ref[1], s.room)), f"You drop the {name}.", True)
    if cmd.verb in ("open", "close") and ref[0] == "item":
        return _refuse(s, f"The {name} cannot be {cmd.verb}d.")
    if cmd.verb == "open":
        is_open, locked = _lock_of(s, ref)
        if is_open or locked:
            return _refuse(s, f"The {name} is {'already open' if is_open else 'locked'}.")
        inside = [_a(w.items[i].name) for i in _items_at(s, box_loc(ref[1]))] if ref[0] == "box" else []
        extra = (
            f" Inside you see {', '.join(inside)}." if inside else " It is empty." if ref[0] == "box" else ""
        )
        return Outcome(_with_lock(s, ref, True, False), f"You open the {name}.{extra}", True)
    if cmd.verb == "close":
        if not _lock_of(s, ref)[0]:
            return _refuse(s, f"The {name} is already closed.")
        return Outcome(_with_lock(s, ref, False, False), f"You close the {name}.", True)
    other, err = _find(w, s, cmd.target, openable if cmd.verb == "put" else held)
    if other is None:
        return _refuse(s, err)
    other_name = _name(w, other)
    if cmd.verb == "put":
        if other[0] != "box":
            return _refuse(s, f"You can't put things in the {other_name}.")
        if not s.box_open[other[1]]:
            return _refuse(s, f"The {other_name} is {'locked' if s.box_locked[other[1]] else 'closed'}.")
        loc = _set(s.loc, ref[1], box_loc(other[1]))
        return Outcome(replace(s, loc=loc), f"You put the {name} in the {other_name}.", True)
    # unlock <ref> with <other>
    if ref[0] == "item":
        return _refuse(s, f"The {name} has no lock.")
    if not _lock_of(s, ref)[1]:
        return _refuse(s, f"The {name} is not locked.")
    if other not in held:
        return _refuse(s, f"You are not holding the {other_name}.")
    key = w.items[other[1]]
    if key.kind != "key":
        return _refuse(s, f"The {other_name} is not a key.")
    if key.colour != name.split()[0]:
        return _refuse(s, f"The {other_name} does not fit the {name}; it needs a {name.split()[0]} key.")
    return Outcome(_with_lock(s, ref, False, False), f"You unlock the {name} with the {other_name}.", True)


def admissible_actions(w: World, s: State) -> list[str]:
    """Every command valid in state ``s`` (checked with :func:`step_world`), sorted."""
    visible = _visible(w, s)
    names = [_name(w, r) for r in visible]
    held = [_name(w, r) for r in visible if r[0] == "item" and s.loc[r[1]] == INVENTORY]
    keys = [n for n in held if n.endswith(" key")]
    holders = [n for r, n in zip(visible, names, strict=True) if r[0] != "item"]
    candidates = {"look", "inventory", *(f"go {d}" for d in w.exits[s.room])}
    candidates |= {f"{verb} {n}" for verb in ("examine", "take", "drop", "open", "close") for n in names}
    candidates |= {f"put {n} in {h}" for n in held for h in holders}
    candidates |= {f"unlock {h} with {k}" for h in holders for k in keys}
    return sorted(c for c in candidates if step_world(w, s, c).valid)


# -- expert -----------------------------------------------------------------------------------------
def level_name(level: str | int) -> str:
    """``"easy"``/``"medium"``/``"hard"`` from a name or an integer level 0..2."""
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level < len(LEVEL_NAMES):
        return LEVEL_NAMES[level]
    if isinstance(level, str) and level.lower() in LEVEL_NAMES:
        return level.lower()
    raise ValueError(f"difficulty must be one of {LEVEL_NAMES} or 0..2, got {level!r}")


class TextWorldEnv(TextEnv):
    """Explore rooms, open (and unlock) doors and containers, and reach a goal; sparse success reward."""

    success_component = "success"
    description = "Embodied text world (BabyAI-Text style): rooms, locked doors and containers, keys, a goal."

    def __init__(
        self,
        difficulty: str | int = "medium",
        level: int | None = None,
        step_penalty: float = 0.01,
        max_turns: int = 50,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(max_turns=max_turns, system_prompt=system_prompt, render_mode=render_mode)
        self.difficulty = level_name(difficulty if level is None else level)
        if step_penalty < 0:
            raise ValueError(f"step_penalty must be >= 0, got {step_penalty}")
        self.step_penalty = float(step_penalty)
        self.world: World
        self.state: State

    def new_episode(self, options: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        options = options or {}
        level = level_name(options.get("level", options.get("difficulty", self.difficulty)))
        self.world = generate(self.np_random, level)
        self.state = self.world.start
        intro = (
            f"You are exploring a house. Your goal: {self.world.goal.text}.\n"
            f"Commands: {GRAMMAR}. Keys open locks of their own colour.\n"
            "Reply with one command per turn (the last command line of your reply is used, "
            "or a command in `backticks`).\n\n"
        )
        return intro + describe(self.world, self.state), self._episode_info(None)

    def turn(self, action: str) -> StepResult:
        line = extract_command(action)
        out = step_world(self.world, self.state, line)
        self.state = out.state
        success = self.world.goal.achieved(self.state)
        done = f" Goal achieved: you {self.world.goal.text}." if success else ""
        return StepResult(
            observation=f"{out.message}{done}\n\n{describe(self.world, self.state)}",
            reward=float(success) - self.step_penalty,
            terminated=success,
            components={
                "success": float(success),
                "steps": float(self.turns),
                "invalid": float(not out.valid),
            },
            info=self._episode_info(line),
        )

    def expert_plan(self) -> list[str]:
        """The scripted expert's commands from the current state to the goal."""
        from .textworld_expert import plan  # the expert imports this module's rules

        return plan(self.world, self.state, self.world.goal)

    def admissible_actions(self) -> list[str]:
        """Every command that is valid now."""
        return admissible_actions(self.world, self.state)

    def _episode_info(self, command: str | None) -> dict[str, Any]:
        return {
            "admissible_actions": self.admissible_actions(),
            "goal": self.world.goal.text,
            "difficulty": self.world.level,
            "room": self.state.room,
            "command": command,
        }
