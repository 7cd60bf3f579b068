"""What the driver's parts share during one run, and the sizes of units.

The driver (pipeline/run/driver.py) keeps the loop; its parts (planner, billing, cluster view,
capacity waits, failures, early stops) each hold their own state and act on this shared context:
the campaign, its store and ledger, the scheduler's unit states and, once Ray is joined, the
executor. A unit's transition is made here once, in the scheduler and the ledger together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.records.ledger import Ledger
from pipeline.records.units import Unit, UnitState
from pipeline.run.executor import Executor
from pipeline.run.scheduler import Capacity, Scheduler
from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store


def unit_gpus(spec: CampaignSpec, u: Unit) -> float:
    """The GPUs a unit holds: a training group's world size, a TTT unit's ttt.gpus, a shard's one
    (the Scheduler's `slots`; `pipeline plan` simulates with the same)."""
    t = spec.train
    return t.world_size * t.gpus_per_worker if u.kind == "train" else spec.eval_recipe(u.recipe).gpus


def size_key(gpus: float) -> str:
    """The CapacityWaits key of the PENDING units that need `gpus` GPUs: they wait as one."""
    return f"units of {gpus:g} GPUs"


def default_shards(capacity: Capacity) -> int:
    """The shards an eval without `shards` is cut into: one per GPU of the cluster as it is now."""
    return max(1, int(capacity.total))


@dataclass
class RunContext:
    spec: CampaignSpec
    store: Store
    layout: Layout
    ledger: Ledger
    sched: Scheduler
    log: Callable[[str], None]
    executor: Executor | None = None  # set once the run has work and Ray is joined

    def gpus(self, u: Unit) -> float:
        return unit_gpus(self.spec, u)

    def move(self, u: Unit, to: UnitState, not_before: float = 0.0, **event: Any) -> None:
        """The unit's transition in the scheduler, and its ledger event with `event`'s fields."""
        self.sched.move(u, to, not_before=not_before)
        self.ledger.record(u, to, **event)
