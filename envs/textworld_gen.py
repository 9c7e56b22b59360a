"""World model and seeded generation for aligngym/TextWorld-v0 (rooms, doors, containers, objects, a goal).

The static layout (:class:`World`) is separate from the dynamic, hashable :class:`State`, so the rules can be
a pure function ``(world, state, command) -> state`` and the expert can plan on states without copying worlds.
Generation is constructive: every lock's key is placed where it can be reached without that lock, and at
medium/hard the goal sits behind the lock(s), so every generated world is solvable and the locks matter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIRECTIONS = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
_STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
COLOURS = ("red", "green", "blue", "yellow", "purple", "grey", "orange", "white")
ITEM_KINDS = ("ball", "apple", "book", "coin", "cup")  # portable, besides keys
BOX_KINDS = ("chest", "box", "drawer")
ROOM_NAMES = (
    "kitchen",
    "study",
    "hallway",
    "bedroom",
    "library",
    "cellar",
    "garden",
    "bathroom",
    "attic",
    "pantry",
    "workshop",
    "lounge",
)
INVENTORY = "@inventory"
LEVEL_NAMES = ("easy", "medium", "hard")


def box_loc(index: int) -> str:
    """The location string of 'inside container ``index``'."""
    return f"box:{index}"


def box_index(loc: str) -> int | None:
    """The container index of a location, or None when the location is a room or the inventory."""
    return int(loc[4:]) if loc.startswith("box:") else None


@dataclass(frozen=True)
class Item:
    """A portable object (keys open locks of their own colour)."""

    colour: str
    kind: str

    @property
    def name(self) -> str:
        """How the world names it: colour and kind."""
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Container(Item):
    """A fixed, openable container standing in a room (named like an item)."""

    room: str


@dataclass(frozen=True)
class Door:
    """A door on the passage between two rooms."""

    colour: str
    rooms: tuple[str, str]

    @property
    def name(self) -> str:
        return f"{self.colour} door"


@dataclass(frozen=True)
class State:
    """Everything that changes during an episode; hashable so planners can search over it."""

    room: str
    loc: tuple[str, ...]  # per item: a room name, INVENTORY, or box_loc(i)
    door_open: tuple[bool, ...]
    door_locked: tuple[bool, ...]
    box_open: tuple[bool, ...]
    box_locked: tuple[bool, ...]


@dataclass(frozen=True)
class Goal:
    """What the episode asks for: ``take`` an item, ``put`` it in a box, ``go`` to a room, or ``open_enter``."""

    kind: str
    text: str
    item: int = -1
    box: int = -1
    room: str = ""
    door: int = -1

    def achieved(self, s: State) -> bool:
        """Whether state ``s`` satisfies the goal."""
        if self.kind == "take":
            return s.loc[self.item] == INVENTORY
        if self.kind == "put":
            return s.loc[self.item] == box_loc(self.box)
        if self.kind == "go":
            return s.room == self.room
        return s.room == self.room and s.door_open[self.door]


@dataclass(frozen=True)
class World:
    """The static layout of one episode, its goal and its initial state."""

    level: str
    rooms: tuple[str, ...]
    exits: dict[str, dict[str, str]]  # room -> direction -> neighbouring room
    door_at: dict[tuple[str, str], int]  # (room, direction) -> door index
    doors: tuple[Door, ...]
    boxes: tuple[Container, ...]
    items: tuple[Item, ...]
    goal: Goal
    start: State = field(compare=False)

    def path(self, src: str, dst: str) -> list[str]:
        """Directions of the shortest route from ``src`` to ``dst``, ignoring doors."""
        back: dict[str, tuple[str, str] | None] = {src: None}
        queue = deque([src])
        while queue:
            room = queue.popleft()
            for d, nxt in self.exits[room].items():
                if nxt not in back:
                    back[nxt] = (room, d)
                    queue.append(nxt)
        route: list[str] = []
        while (step := back[dst]) is not None:
            dst, d = step
            route.append(d)
        return route[::-1]

    def key_for(self, colour: str) -> int | None:
        """The index of the key of ``colour``, if the world has one."""
        return next((i for i, it in enumerate(self.items) if it.kind == "key" and it.colour == colour), None)


@dataclass(frozen=True)
class Level:
    """Generation parameters of one difficulty."""

    rooms: tuple[int, int]
    locks: tuple[str, ...]  # lock plans to pick from: none, door, box, both
    items: tuple[int, int]
    boxes: tuple[int, int]
    distractors: int
    door_prob: float


LEVELS = {
    "easy": Level((1, 2), ("none",), (2, 3), (1, 2), 0, 0.5),
    "medium": Level((3, 4), ("door", "box"), (2, 3), (1, 2), 0, 0.3),
    "hard": Level((5, 6), ("both",), (2, 3), (2, 3), 3, 0.3),
}


class _Builder:
    """Mutable scratch space for one generation; every random choice goes through ``self.rng``."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.items: list[Item] = []
        self.loc: list[str] = []
        self.boxes: list[Container] = []
        self.box_locked: list[bool] = []

    def pick(self, seq: Any) -> Any:
        seq = list(seq)
        return seq[int(self.rng.integers(0, len(seq)))]

    def randint(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def grid(self, n: int) -> tuple[list[str], dict[str, dict[str, str]]]:
        """``n`` rooms grown on a grid as a tree from room 0; exits follow the grid directions."""
        names = [ROOM_NAMES[int(i)] for i in self.rng.choice(len(ROOM_NAMES), size=n, replace=False)]
        coords = [(0, 0)]
        exits: dict[str, dict[str, str]] = {names[0]: {}}
        for k in range(1, n):
            taken = set(coords)
            options = sorted(
                (j, d)
                for j, (x, y) in enumerate(coords)
                for d, (dx, dy) in _STEP.items()
                if (x + dx, y + dy) not in taken
            )
            j, d = self.pick(options)
            coords.append((coords[j][0] + _STEP[d][0], coords[j][1] + _STEP[d][1]))
            exits[names[j]][d] = names[k]
            exits[names[k]] = {OPPOSITE[d]: names[j]}
        return names, exits

    def new_item(self, kinds: tuple[str, ...], colours: tuple[str, ...] = COLOURS) -> int | None:
        """Add an item with an unused (colour, kind) pair; None when the pool is exhausted."""
        used = {(it.colour, it.kind) for it in self.items}
        pool = [(c, k) for k in kinds for c in colours if (c, k) not in used]
        if not pool:
            return None
        self.items.append(Item(*self.pick(pool)))
        self.loc.append("")
        return len(self.items) - 1

    def spot(self, rooms: list[str], locked_ok: bool = False) -> str:
        """A random floor or container location in one of ``rooms`` (locked containers only if allowed)."""
        room = self.pick(rooms)
        inside = [
            box_loc(j)
            for j, b in enumerate(self.boxes)
            if b.room == room and (locked_ok or not self.box_locked[j])
        ]
        return self.pick([room, *inside])


def _far_side(exits: dict[str, dict[str, str]], near: str, far: str) -> set[str]:
    """Rooms reachable from ``far`` without passing back through ``near`` (a tree's subtree)."""
    seen, queue = {far}, deque([far])
    while queue:
        for nxt in exits[queue.popleft()].values():
            if nxt != near and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def generate(rng: np.random.Generator, level: str) -> World:
    """A solvable world of difficulty ``level`` drawn from ``rng`` (same generator state, same world)."""
    spec, b = LEVELS[level], _Builder(rng)
    rooms, exits = b.grid(b.randint(*spec.rooms))
    lock = b.pick(spec.locks)
    # Tree edges as (parent, direction, child): rooms are numbered in growth order, so the child is later.
    edges = [(a, d, c) for a in rooms for d, c in exits[a].items() if rooms.index(a) < rooms.index(c)]
    locked_edge = b.pick(edges) if lock in ("door", "both") else None
    door_colours = [str(c) for c in rng.permutation(COLOURS)]
    doors: list[Door] = []
    door_at: dict[tuple[str, str], int] = {}
    door_locked: list[bool] = []
    far_room: list[str] = []
    for a, d, c in edges:
        if (a, d, c) == locked_edge or rng.random() < spec.door_prob:
            door_at[(a, d)] = door_at[(c, OPPOSITE[d])] = len(doors)
            doors.append(Door(door_colours.pop(), (a, c)))
            door_locked.append((a, d, c) == locked_edge)
            far_room.append(c)
    behind = _far_side(exits, locked_edge[0], locked_edge[2]) if locked_edge else set()
    front = [r for r in rooms if r not in behind]
    locked_door = door_locked.index(True) if locked_edge else None
    lock_colours = {doors[locked_door].colour} if locked_door is not None else set()

    goal_kinds = ["take", "put"]
    if lock in ("none", "door") and len(rooms) > 1:
        goal_kinds += ["go"] + (["open_enter"] if doors else [])
    goal_kind = b.pick(goal_kinds)

    # Containers: box 0 is the locked one (behind the locked door at hard), or the goal box behind the door.
    pairs = [(c, k) for c in COLOURS for k in BOX_KINDS if c not in lock_colours]
    for j in range(b.randint(*spec.boxes)):
        colour, kind = b.pick(pairs)
        pairs = [p for p in pairs if p != (colour, kind)]
        locked = j == 0 and lock in ("box", "both")
        in_behind = j == 0 and (lock == "both" or (lock == "door" and goal_kind == "put"))
        b.boxes.append(Container(colour, kind, b.pick(sorted(behind) if in_behind else rooms)))
        b.box_locked.append(locked)
        if locked:
            lock_colours.add(colour)
    box_open = [not locked and bool(rng.random() < 0.5) for locked in b.box_locked]

    # Keys first, where they can be reached without the lock they open; then ordinary objects.
    if locked_door is not None:
        key = b.new_item(("key",), (doors[locked_door].colour,))
        b.loc[key] = b.spot(front)
    if lock in ("box", "both"):
        key = b.new_item(("key",), (b.boxes[0].colour,))
        b.loc[key] = b.spot(rooms)
    for _ in range(b.randint(*spec.items)):
        i = b.new_item(ITEM_KINDS)
        b.loc[i] = b.spot(rooms, locked_ok=True)
    goal = _pick_goal(b, goal_kind, lock, rooms, behind, doors, door_at, far_room, locked_door)
    for k in range(spec.distractors):
        # One distractor is a key that fits nothing, so a wrong-colour key is there to be tried.
        unused = tuple(c for c in COLOURS if c not in {d.colour for d in doors} | {x.colour for x in b.boxes})
        i = b.new_item(("key",), unused) if k == 0 and unused else None
        i = b.new_item(ITEM_KINDS) if i is None else i
        if i is not None:
            b.loc[i] = b.spot(rooms, locked_ok=True)

    start = State(
        room=rooms[0],
        loc=tuple(b.loc),
        door_open=tuple(False for _ in doors),
        door_locked=tuple(door_locked),
        box_open=tuple(box_open),
        box_locked=tuple(b.box_locked),
    )
    return World(
        level, tuple(rooms), exits, door_at, tuple(doors), tuple(b.boxes), tuple(b.items), goal, start
    )


def _pick_goal(
    b: _Builder,
    kind: str,
    lock: str,
    rooms: list[str],
    behind: set[str],
    doors: list[Door],
    door_at: dict[tuple[str, str], int],
    far_room: list[str],
    locked_door: int | None,
) -> Goal:
    """The goal of kind ``kind``; with a lock it is placed so that reaching it needs the lock opened."""
    if kind == "go":
        room = b.pick(sorted(behind) if behind else rooms[1:])
        return Goal("go", f"go to the {room}", room=room)
    if kind == "open_enter":
        d = locked_door if locked_door is not None else b.pick(range(len(doors)))
        return Goal(
            "open_enter", f"open the {doors[d].name} and enter the {far_room[d]}", room=far_room[d], door=d
        )
    if kind == "take":
        if lock == "none":
            item = b.pick(range(len(b.items)))
        else:
            item = b.new_item(ITEM_KINDS)
            assert item is not None  # the pool of 40 pairs outlasts any level's item count
            b.loc[item] = box_loc(0) if lock in ("box", "both") else b.spot(sorted(behind))
        return Goal("take", f"take the {b.items[item].name}", item=item)
    box = 0 if lock != "none" else b.pick(range(len(b.boxes)))
    outside = [i for i, loc in enumerate(b.loc) if loc != box_loc(box)]
    if outside:
        item = b.pick(outside)
    else:  # every object already sits in that box: add one on a floor
        item = b.new_item(ITEM_KINDS)
        assert item is not None
        b.loc[item] = b.pick(rooms)
    return Goal("put", f"put the {b.items[item].name} in the {b.boxes[box].name}", item=item, box=box)
