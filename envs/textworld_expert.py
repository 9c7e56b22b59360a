"""The TextWorld-v0 expert: a goal-directed planner over the world's structure, using the env's own rules.

It fetches the keys for locked doors on its route first, then unlocks and opens what the goal needs; it
re-plans from any state, so it also recovers after the agent wandered.
"""

from __future__ import annotations

from typing import Any

from .textworld import Ref, _lock_of, _name, step_world
from .textworld_gen import INVENTORY, Goal, State, World, box_index


class _PlanError(Exception):
    """The planner met a lock it cannot open (a key behind its own lock); never raised for generated worlds."""


class _Planner:
    """Goal-directed expert: walks, fetches keys, unlocks and opens what is in the way, via the real rules."""

    def __init__(self, world: World, state: State):
        self.w, self.s, self.plan = world, state, []
        self.opening: set[Ref] = set()  # locks being opened, to detect key-behind-its-own-lock cycles

    def do(self, command: str) -> None:
        out = step_world(self.w, self.s, command)
        if not out.valid:
            raise _PlanError(command)
        self.s = out.state
        self.plan.append(command)

    def held(self, item: int | None) -> bool:
        return item is not None and self.s.loc[item] == INVENTORY

    def get_key(self, ref: Ref) -> int:
        """Hold the key of locked door or box ``ref``, fetching it first."""
        key = self.w.key_for(_name(self.w, ref).split()[0])
        if key is None or ref in self.opening:  # no key, or the key lies behind this very lock
            raise _PlanError(_name(self.w, ref))
        self.opening.add(ref)
        self.fetch(key)
        self.opening.discard(ref)
        return key

    def reach(self, room: str) -> None:
        while self.s.room != room:
            route = self.w.path(self.s.room, room)
            # Fetch the keys of every locked door on the way before setting off, not at each door.
            here, locked = self.s.room, None
            for d in route:
                door = self.w.door_at.get((here, d))
                if locked is None and door is not None and self.s.door_locked[door]:
                    locked = None if self.held(self.w.key_for(self.w.doors[door].colour)) else door
                here = self.w.exits[here][d]
            if locked is not None:
                self.get_key(("door", locked))
                continue
            door = self.w.door_at.get((self.s.room, route[0]))
            if door is not None and not self.s.door_open[door]:
                self.open(("door", door), self.s.room)
            self.do(f"go {route[0]}")

    def open(self, ref: Ref, room: str) -> None:
        """Open door or box ``ref`` (standing in ``room``), unlocking it first when it is locked."""
        name = _name(self.w, ref)
        if _lock_of(self.s, ref)[1]:
            key = self.get_key(ref)
            self.reach(room)
            self.do(f"unlock {name} with {self.w.items[key].name}")
        if not _lock_of(self.s, ref)[0]:
            self.do(f"open {name}")

    def fetch(self, item: int) -> None:
        where = self.s.loc[item]
        if where == INVENTORY:
            return
        j = box_index(where)
        if j is not None:
            if self.s.box_locked[j]:
                self.get_key(("box", j))  # before walking there, not after
            self.reach(self.w.boxes[j].room)
            self.open(("box", j), self.w.boxes[j].room)
        else:
            self.reach(where)
        self.do(f"take {self.w.items[item].name}")


def plan(world: World, state: State, goal: Goal) -> list[str]:
    """Commands that take ``state`` to ``goal`` (empty if already there or, never for generated worlds, stuck)."""
    p = _Planner(world, state)
    try:
        if goal.kind == "take":
            p.fetch(goal.item)
        elif goal.kind == "put":
            box = world.boxes[goal.box]
            p.fetch(goal.item)
            if p.s.box_locked[goal.box]:
                p.get_key(("box", goal.box))
            p.reach(box.room)
            p.open(("box", goal.box), box.room)
            p.do(f"put {world.items[goal.item].name} in {box.name}")
        else:
            p.reach(goal.room)
            if goal.kind == "open_enter":
                p.open(("door", goal.door), goal.room)
    except _PlanError:
        return []
    return p.plan if goal.achieved(p.s) else []


def solve(env: Any) -> list[str]:
    """The scripted expert's command sequence from the current state of a (possibly wrapped) TextWorld env."""
    return getattr(env, "unwrapped", env).expert_plan()


# -- environment ------------------------------------------------------------------------------------
