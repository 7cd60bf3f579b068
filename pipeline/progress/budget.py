"""The driver's budget policy: start no unit once the bill so far + what the cluster bills until the
next check + $ projected to finish would pass `budget_usd` (docs/progress-cost.md "Budget"). What finished stays
valid; a re-run with a larger budget goes on.

The bill is pipeline/progress/cost.py's (every second of every watched node at its own price, idle
ones included), the one `pipeline cost` prints. The projection is per unit, from what this campaign
has measured: an eval shard needs its batches × the GPU-seconds per batch its recipe has taken so
far (any seed); a training what earlier trainings took, or `train.max_wallclock_s` on its GPUs
before any has finished; a GPU-second costs the cluster's burn rate per GPU (so its idle nodes are
paid for too). Units with nothing to go on yet (a recipe no batch of which has finished) are counted
and named, not guessed. Stopping new work does not stop the bill: the stop line names what still
runs and bills, with the command that stops each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.records.nodes import NodeIdentity


@dataclass(frozen=True)
class Projection:
    spent_usd: float  # the bill so far
    to_finish_usd: float
    unprojected: int  # units with no measured rate yet
    next_check_usd: float = 0.0  # what the cluster bills before the budget is looked at again

    @property
    def total_usd(self) -> float:
        return self.spent_usd + self.next_check_usd + self.to_finish_usd

    def describe(self) -> str:
        more = f" (+ {self.unprojected} unit(s) not yet measured)" if self.unprojected else ""
        soon = f" + ${self.next_check_usd:.2f} until the next check" if self.next_check_usd >= 0.005 else ""
        return f"${self.spent_usd:.2f} spent{soon} + ${self.to_finish_usd:.2f} to finish{more}"


@dataclass
class Rates:
    """GPU-seconds per batch of each recipe, and per training, from finished attempts."""

    eval_gpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    eval_batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    train_gpu_s: list[float] = field(default_factory=list)

    def observe(self, kind: str, recipe: str, gpu_s: float, batches: int | None) -> None:
        if kind == "train":
            self.train_gpu_s.append(gpu_s)
        elif batches:
            self.eval_gpu_s[recipe] += gpu_s
            self.eval_batches[recipe] += batches

    def per_batch(self, recipe: str) -> float | None:
        n = self.eval_batches.get(recipe, 0)
        return self.eval_gpu_s[recipe] / n if n else None

    def train(self, default_gpu_s: float) -> float:
        return sum(self.train_gpu_s) / len(self.train_gpu_s) if self.train_gpu_s else default_gpu_s


@dataclass(frozen=True)
class Work:
    """A unit not finished yet, as the projection sees it."""

    kind: str
    recipe: str
    gpus: float
    batches: int | None  # an eval shard's batches in the plan
    elapsed_s: float = 0.0  # running for this long


class Budget:
    def __init__(self, limit_usd: float | None, log: Callable[[str], None]):
        self.limit_usd, self.log = limit_usd, log
        self.stopped: str | None = None  # why new units stopped, once they have

    @staticmethod
    def project(spent_usd: float, work: list[Work], rates: Rates, usd_per_gpu_s: float, train_default_gpu_s: float,
                next_check_usd: float = 0.0) -> Projection:
        to_finish, unknown = 0.0, 0
        for w in work:
            if w.kind == "train":
                need = rates.train(train_default_gpu_s)
            else:
                per = rates.per_batch(w.recipe)
                if per is None or w.batches is None:
                    unknown += 1
                    continue
                need = per * w.batches
            to_finish += max(0.0, need - w.elapsed_s * w.gpus) * usd_per_gpu_s
        return Projection(spent_usd, to_finish, unknown, next_check_usd)

    def allows(self, p: Projection, still_billing: Callable[[], str] = lambda: "") -> bool:
        """`still_billing`: what runs and bills on once no unit starts (asked when new work stops)."""
        if self.limit_usd is None:
            return True
        if p.total_usd <= self.limit_usd:
            return True
        if self.stopped is None:
            self.stopped = f"budget ${self.limit_usd:.2f}: {p.describe()} would pass it; starting no more units"
            rest = still_billing()
            self.log(self.stopped + (f". {rest}" if rest else ""))
        return False


def still_billing(units: list[str], nodes: list[NodeIdentity], stop_driver: str) -> str:
    """What bills on after the budget stopped new work, with the commands that stop it: the running
    units (they finish unless the driver is stopped) and the alive nodes (pods bill until stopped)."""
    out = []
    if units:
        shown = ", ".join(units[:3]) + (f", ... ({len(units)} in all)" if len(units) > 3 else "")
        out.append(f"still running: {shown}; they finish unless stopped: {stop_driver}")
    alive = [n for n in nodes if n.alive and n.hourly_usd > 0]
    pods = sorted((n for n in alive if n.pod_id), key=lambda n: -n.hourly_usd)  # the dearest first
    if pods:
        each = ", ".join(f"{n.pod_id} ${n.hourly_usd:.2f}/h" for n in pods)
        out.append(f"pods billing ${sum(n.hourly_usd for n in pods):.2f}/h ({each}): `pipeline pods stop {' '.join(n.pod_id for n in pods)}`")
    if len(pods) < len(alive):
        out.append(f"{len(alive) - len(pods)} node(s) not a known pod bill ${sum(n.hourly_usd for n in alive if not n.pod_id):.2f}/h until their machines stop")
    return "; ".join(out)

