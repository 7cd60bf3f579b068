"""Units of work and their one state machine (docs/design.md §4).

A unit is `train(seed)` or `eval(seed, recipe, shard)`.

    PENDING ──▶ RUNNING ──▶ DONE                      (its commit object is in the store)
       │           │
       │           ├──▶ INTERRUPTED ──▶ PENDING       (node died, worker crashed: resumed)
       │           ├──▶ FAILED                        (a real error: bad input, a bug; kept with
       │           │                                  its message, tried again only by a new run)
       └───────────┴──▶ ESTIMATED                     (its eval's stop_when rule held: a number
                                                      with an interval; a run without the rule
                                                      resumes it to DONE)

DONE is decided by the store alone (the commit object exists: train/manifest.json, or an eval
shard's done.json), and so is ESTIMATED (the eval's estimate object for its rule exists), so a
re-run, another driver or a laptop after the cluster is gone all agree on it. Every transition is
appended to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.store import Layout


class UnitState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    INTERRUPTED = "INTERRUPTED"
    FAILED = "FAILED"
    ESTIMATED = "ESTIMATED"


TRANSITIONS: dict[UnitState, frozenset[UnitState]] = {
    UnitState.PENDING: frozenset({UnitState.RUNNING, UnitState.ESTIMATED}),
    UnitState.RUNNING: frozenset({UnitState.DONE, UnitState.INTERRUPTED, UnitState.FAILED, UnitState.ESTIMATED}),
    UnitState.INTERRUPTED: frozenset({UnitState.PENDING}),
    UnitState.FAILED: frozenset(),
    UnitState.DONE: frozenset(),
    UnitState.ESTIMATED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True, order=True)
class Unit:
    kind: str  # "train" | "eval"
    seed: int
    recipe: str = ""
    shard: int = 0

    @classmethod
    def train(cls, seed: int) -> Unit:
        return cls("train", seed)

    @classmethod
    def eval(cls, seed: int, recipe: str, shard: int = 0) -> Unit:
        return cls("eval", seed, recipe, shard)

    @property
    def id(self) -> str:
        if self.kind == "train":
            return f"train/{self.seed}"
        return f"eval/{self.seed}/{self.recipe}/{self.shard}"

    def commit_key(self, layout: Layout) -> str:
        if self.kind == "train":
            return layout.manifest(self.seed)
        return layout.shard_done(self.seed, self.recipe, self.shard)

    def __str__(self) -> str:
        return self.id


class UnitTracker:
    """Current state of each unit in this driver, enforcing TRANSITIONS."""

    def __init__(self) -> None:
        self.states: dict[Unit, UnitState] = {}

    def add(self, unit: Unit, state: UnitState = UnitState.PENDING) -> None:
        self.states[unit] = state

    def move(self, unit: Unit, to: UnitState) -> None:
        cur = self.states[unit]
        if to not in TRANSITIONS[cur]:
            raise IllegalTransition(f"{unit}: {cur.value} → {to.value} is not a legal transition")
        self.states[unit] = to

    def in_state(self, state: UnitState) -> list[Unit]:
        return sorted(u for u, s in self.states.items() if s == state)

    def state(self, unit: Unit) -> UnitState:
        return self.states[unit]
