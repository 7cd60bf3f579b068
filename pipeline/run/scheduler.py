"""The campaign's units, their states, and which of them start next (docs/scale.md "Scale").

One object holds what the driver loop decides on: every unit's state (through the one state
machine, `pipeline.records.units.UnitTracker`), the PENDING units queued by how many GPUs they need, the
retry backoffs, the running attempts and the GPUs they hold, and how many shards of each eval are
DONE. Each call costs what changed, not the size of the campaign: a launch pops a heap, a finished
shard bumps a counter, a retry's backoff waits in its own heap. With 25,000 units, re-sorting them
on every loop turn (what a list of units invites) is what made a sweep's driver cost grow with the
square of its size.

Order, as docs/progress-cost.md "Waiting for GPUs" says: trainings first, in seed order, as many groups as the
cluster holds; evals fill the GPUs training leaves free, largest first (multi-GPU TTT units are
the long sequential ones), and when the largest one that fits the cluster does not fit the free
GPUs nothing smaller jumps ahead of it: GPUs gather for it instead of going to 1-GPU shards one by
one. A unit bigger than the whole cluster is never started; it waits (CapacityWaits, below).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.records.units import Unit, UnitState, UnitTracker


@dataclass(frozen=True)
class Capacity:
    """The cluster's GPUs as the scheduler sees them: each alive node's GPUs and, where the
    executor knows them, each node's free GPUs. A group (a training, a k-GPU TTT unit) runs on one
    node (STRICT_PACK: NCCL over NVLink, never over RunPod's network), so it fits only where one
    node holds it; `span` (cluster.groups_span_nodes) lets a group no node holds spread instead."""

    nodes: tuple[float, ...] = ()
    free: tuple[float, ...] | None = None  # same order as nodes; None: unknown (sums only)
    span: bool = False

    @classmethod
    def of(cls, c: Capacity | float) -> Capacity:
        """A bare number is one node of that many GPUs (a single host, fake units)."""
        return c if isinstance(c, Capacity) else cls((float(c),) if c > 0 else ())

    @property
    def total(self) -> float:
        return float(sum(self.nodes))

    @property
    def largest(self) -> float:
        return max(self.nodes, default=0.0)

    def packs(self, size: float) -> bool:
        """Whether a unit of `size` GPUs runs on one node."""
        return size > 1 and not (self.span and size > self.largest)

    def fits(self, size: float) -> bool:
        return size <= (self.largest if self.packs(size) else self.total)

    def says(self, size: float) -> str:
        """Why a unit of `size` GPUs does not fit, in the words of `pipeline status`."""
        if self.packs(size) and size <= self.total:
            return (f"the largest node has {self.largest:g} of the cluster's {self.total:g} (a group runs on one node;"
                    " cluster.groups_span_nodes lets it spread)")
        return f"the cluster has {self.total:g}"


@dataclass
class Attempt:
    """One running attempt of a unit."""

    unit: Unit
    id: str
    started: float  # time.perf_counter()
    gpus: float = 1.0
    started_wall: float = field(default_factory=time.time)


@dataclass
class EvalShards:
    """One (seed, recipe)'s shard units, how many batches each scores, and how many are DONE."""

    units: list[Unit]
    batches: list[int]
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.done == len(self.units)


class _Queue:
    """PENDING units of one GPU size in unit order. A heap with lazy deletion: a unit that left
    PENDING stays in the heap until it reaches the top, where it is dropped."""

    def __init__(self) -> None:
        self.heap: list[Unit] = []
        self.queued: set[Unit] = set()  # in the heap (some may no longer be ready)
        self.ready: set[Unit] = set()  # PENDING and past any backoff

    def push(self, u: Unit) -> None:
        self.ready.add(u)
        if u not in self.queued:
            self.queued.add(u)
            heapq.heappush(self.heap, u)

    def top(self) -> Unit | None:
        while self.heap and self.heap[0] not in self.ready:
            self.queued.discard(heapq.heappop(self.heap))
        return self.heap[0] if self.heap else None

    def pop(self) -> Unit:
        u = heapq.heappop(self.heap)
        self.queued.discard(u)
        self.ready.discard(u)
        return u


class Scheduler:
    def __init__(self, slots: Callable[[Unit], float]):
        """`slots(unit)`: the GPUs the unit needs (a training group's world size, a TTT unit's ttt.gpus)."""
        self.slots = slots
        self.tracker = UnitTracker()
        self._trains = _Queue()
        self._evals: dict[float, _Queue] = {}
        self._backoff: list[tuple[float, Unit]] = []  # (not before, unit), PENDING units waiting to retry
        self._not_before: dict[Unit, float] = {}
        self._pending: dict[float, set[Unit]] = {}  # GPU size → PENDING units (ready or backing off)
        self.running: dict[Any, Attempt] = {}  # executor handle → attempt
        self.busy = {"train": 0.0, "eval": 0.0}  # GPUs the running attempts hold
        self.evals: dict[tuple[int, str], EvalShards] = {}

    # --- units and their states -------------------------------------------------------------

    def add(self, u: Unit, state: UnitState) -> None:
        self.tracker.add(u, state)
        if state is UnitState.PENDING:
            self._enter_pending(u, 0.0)

    def add_eval(self, seed: int, recipe: str, batches: list[int], states: list[UnitState]) -> EvalShards:
        """The shard units of a planned eval, in their states (DONE ones are counted)."""
        shards = self.evals[(seed, recipe)] = EvalShards([Unit.eval(seed, recipe, k) for k in range(len(batches))], batches)
        for u, st in zip(shards.units, states, strict=True):
            self.add(u, st)
            shards.done += st is UnitState.DONE
        return shards

    def state(self, u: Unit) -> UnitState:
        return self.tracker.state(u)

    def move(self, u: Unit, to: UnitState, not_before: float = 0.0) -> None:
        """The one way a unit changes state here; `not_before` (time.monotonic()) delays a unit
        going back to PENDING (a retry's backoff)."""
        was = self.tracker.state(u)
        self.tracker.move(u, to)
        if was is UnitState.PENDING:
            self._leave_pending(u)
        if to is UnitState.PENDING:
            self._enter_pending(u, not_before)
        elif to is UnitState.DONE and u.kind == "eval":
            self.evals[(u.seed, u.recipe)].done += 1

    def in_state(self, state: UnitState) -> list[Unit]:
        """Every unit in `state`, sorted: walks all units, so for reports, not for the loop."""
        return self.tracker.in_state(state)

    def _queue(self, u: Unit) -> _Queue:
        return self._trains if u.kind == "train" else self._evals.setdefault(self.slots(u), _Queue())

    def _enter_pending(self, u: Unit, not_before: float) -> None:
        self._pending.setdefault(self.slots(u), set()).add(u)
        if not_before > time.monotonic():
            self._not_before[u] = not_before
            heapq.heappush(self._backoff, (not_before, u))
        else:
            self._queue(u).push(u)

    def _leave_pending(self, u: Unit) -> None:
        self._pending[self.slots(u)].discard(u)
        self._not_before.pop(u, None)
        self._queue(u).ready.discard(u)

    # --- what starts next -------------------------------------------------------------------

    def launches(self, capacity: Capacity | float, now: float | None = None) -> list[Unit]:
        """The PENDING units to start now on the cluster's GPUs (`capacity`), given what runs.
        A group that packs starts only when one node has its GPUs free (where the executor knows
        per-node free GPUs); until then the GPUs that free up gather for it."""
        self._due(time.monotonic() if now is None else now)
        cap = Capacity.of(capacity)
        spare = list(cap.free) if cap.free is not None else None

        def room(size: float) -> bool:  # one node has `size` free GPUs: take them there (best fit)
            if spare is None or not cap.packs(size):
                return True
            fit = [i for i, f in enumerate(spare) if f >= size]
            if not fit:
                return False
            spare[min(fit, key=lambda i: spare[i])] -= size
            return True

        out: list[Unit] = []
        train = self.busy["train"]
        while (u := self._trains.top()) is not None and cap.fits(self.slots(u)) and (train == 0 or train + self.slots(u) <= cap.total):
            if not room(self.slots(u)):
                break
            out.append(self._trains.pop())
            train += self.slots(u)
        free = max(cap.total - train - self.busy["eval"], 0.0)
        for size in sorted(self._evals, reverse=True):
            if not cap.fits(size):
                continue  # never fits: waits for capacity without holding smaller units back
            q = self._evals[size]
            while q.top() is not None and size <= free and room(size):
                out.append(q.pop())
                free -= size
            if q.top() is not None:
                break  # the GPUs that free up gather for it
        return out

    def _due(self, now: float) -> None:
        """Units whose backoff is over become ready."""
        while self._backoff and self._backoff[0][0] <= now:
            t, u = heapq.heappop(self._backoff)
            if self._not_before.get(u) == t:
                del self._not_before[u]
                self._queue(u).push(u)

    def has_pending(self) -> bool:
        return any(self._pending.values())

    def launchable(self, capacity: Capacity | float) -> bool:
        """Whether some PENDING unit fits the cluster (now, or once its backoff is over)."""
        cap = Capacity.of(capacity)
        return any(units for size, units in self._pending.items() if cap.fits(size))

    def too_big(self, capacity: Capacity | float) -> Iterator[tuple[float, int, Unit]]:
        """(GPUs, how many, the first in launch order) of the PENDING units that need more GPUs
        than the cluster has, one entry per size: what waits costs a step per size, not per unit
        (a sweep whose pods all died has tens of thousands)."""
        cap = Capacity.of(capacity)
        for size, units in self._pending.items():
            if not cap.fits(size) and units:
                queues = (self._trains, self._evals.get(size))
                tops = [t for q in queues if q is not None and (t := q.top()) is not None and self.slots(t) == size]
                yield size, len(units), min(tops) if tops else min(units)  # all backing off: rare, then a walk

    def pending_of(self, size: float) -> int:
        """How many PENDING units need `size` GPUs."""
        return len(self._pending.get(size, ()))

    def pending(self) -> Iterator[Unit]:
        for units in self._pending.values():
            yield from units

    # --- running attempts -------------------------------------------------------------------

    def started(self, handle: Any, att: Attempt) -> None:
        self.move(att.unit, UnitState.RUNNING)
        self.running[handle] = att
        self.busy[att.unit.kind] += att.gpus

    def ended(self, handle: Any) -> Attempt:
        """Forget a running attempt (it returned, failed or was cancelled); its unit's next state
        is the caller's `move`."""
        att = self.running.pop(handle)
        self.busy[att.unit.kind] -= att.gpus
        if not any(a.unit.kind == att.unit.kind for a in self.running.values()):
            self.busy[att.unit.kind] = 0.0  # no float residue of fractional GPUs keeps a GPU "busy"
        return att


class CapacityWaits:
    """Units that need more GPUs than the cluster has (a node left, a group bigger than the
    pods): each waits at most `limit_s`, saying once a minute what it waits for; then the run
    ends with it PENDING."""

    def __init__(
        self, limit_s: float, log: Callable[[str], None], now: Callable[[], float] = time.monotonic,
        record: Callable[[str, str | None], Any] | None = None,
    ):
        """`record(key, what)` is told when a wait starts and (what=None) ends: the ledger, so
        `pipeline status` can say what waits and why."""
        self.limit_s, self.log, self.now, self.record = limit_s, log, now, record
        self.since: dict[str, float] = {}
        self.said: dict[str, float] = {}
        self.what: dict[str, str] = {}

    def waiting(self, key: str, need: float, capacity: Capacity | float, who: str | None = None, many: bool = False) -> bool:
        """Record that `key` (said as `who`; `many`: a group of units) needs `need` GPUs now;
        True while it may still wait."""
        t = self.now()
        self.since.setdefault(key, t)
        what = f"{who or key} wait{'' if many else 's'} for {need:g} GPUs; {Capacity.of(capacity).says(need)}"
        if self.record is not None and self.what.get(key) != what:
            self.record(key, what)
        self.what[key] = what
        if t - self.said.get(key, -1e18) >= 60:
            left = self.limit_s - (t - self.since[key])
            self.log(f"{self.what[key]} (giving up in {left:.0f} s)")
            self.said[key] = t
        return t - self.since[key] < self.limit_s

    def carry(self, key: str, to: str) -> None:
        """`key`'s wait goes on as part of `to`'s, from whichever began first."""
        if key in self.since:
            self.since[to] = min(self.since.get(to, self.since[key]), self.since[key])
        self.satisfied(key)

    def satisfied(self, key: str) -> None:
        if self.record is not None and key in self.what:
            self.record(key, None)
        self.since.pop(key, None)
        self.said.pop(key, None)
        self.what.pop(key, None)
