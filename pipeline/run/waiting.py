"""Units waiting for GPUs the cluster does not have, and what the idle-pod stopper must leave
runnable.

Units the cluster cannot hold now (and evals that cannot be planned on a cluster with no GPUs)
wait for capacity, each for at most wait_for_capacity_s; a running unit that lost its GPUs is
cancelled when its wait runs out (Ray would hold it forever). Units that waited in vain stay
PENDING. It costs what waits, not what is pending: PENDING units wait (and are logged) as one per
GPU size, the units that fit are counted, not walked. Units of one size wait together: one
planned after their wait ran out gives up with them (the cluster has lacked those GPUs that long).
"""

from __future__ import annotations

from pipeline.pods.idle import Demand
from pipeline.records.units import Unit, UnitState
from pipeline.run.context import RunContext, size_key
from pipeline.run.report import RunReport
from pipeline.run.scheduler import Capacity, CapacityWaits

UNPLANNED = "evals not planned"  # the CapacityWaits key of trained seeds' evals on a cluster with no GPUs


class Waiting:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.waits = CapacityWaits(ctx.spec.cluster.wait_for_capacity_s, ctx.log, record=ctx.ledger.waiting)
        self.units: dict[str, Unit] = {}  # CapacityWaits keys of running units that lost their GPUs
        self.sizes: dict[str, float] = {}  # CapacityWaits keys of PENDING units, one per GPU size

    def keep_going(self, capacity: Capacity, budget_blocked: bool, unplanned: list[int], report: RunReport) -> bool:
        """Whether the loop has anything left to wait for; ends the waits that are over and the
        running units whose wait ran out."""
        self._end_waits(capacity, unplanned, report)
        self._give_up_running(capacity, report)
        still_waiting = False
        for size, n, first in () if budget_blocked else self.ctx.sched.too_big(capacity):
            key = size_key(size)
            self.sizes[key] = size
            who = first.id if n == 1 else f"{n:,} units ({first}, ...)"
            if self.waits.waiting(key, size, capacity, who, many=n > 1):
                still_waiting = True
            else:
                report.waiting[key] = self.waits.what[key]
        if unplanned:  # trained seeds whose evals wait for GPUs to be sharded over
            n, first = len(unplanned), min(unplanned)
            who = f"evals of seed {first}" if n == 1 else f"evals of {n:,} seeds ({first}, ...)"
            if self.waits.waiting(UNPLANNED, 1, capacity, who):
                still_waiting = True
            else:
                report.waiting[UNPLANNED] = self.waits.what[UNPLANNED]
        sched = self.ctx.sched
        if sched.running or (sched.launchable(capacity) and not budget_blocked) or still_waiting:
            return True
        for what in report.waiting.values():
            self.ctx.log(f"gave up after {self.waits.limit_s:.0f} s: {what}; run again once the cluster has them")
        return False

    def pod_demand(self, capacity: Capacity, budget_blocked: bool, avoid: dict[Unit, tuple[str, ...]]) -> Demand:
        """What the idle stopper must leave runnable: the PENDING units of each size (a count per
        size, not a walk) and the running units that lost their GPUs; nothing while the budget
        holds new launches (they would not start on a pod kept for them)."""
        if budget_blocked:
            return Demand(capacity.total)
        ctx, sched = self.ctx, self.ctx.sched
        sizes = {ctx.gpus(Unit.train(0))} | {e.gpus for e in ctx.spec.evals}
        avoided = [(ctx.gpus(u), nodes) for u, nodes in avoid.items() if nodes and sched.state(u) is UnitState.PENDING]
        waiting = [ctx.gpus(u) for u in self.units.values()]
        return Demand.of(capacity.total, {s: sched.pending_of(s) for s in sizes}, avoided, waiting)

    def gave_up(self, u: Unit, report: RunReport) -> bool:
        """Whether `u` (left PENDING) waited in vain: for itself or with the units of its size."""
        return u.id in report.waiting or size_key(self.ctx.gpus(u)) in report.waiting

    def _end_waits(self, capacity: Capacity, unplanned: list[int], report: RunReport) -> None:
        sched = self.ctx.sched
        for key, u in list(self.units.items()):  # waits that are over: the unit fits, or ended
            state = sched.state(u)
            if capacity.fits(self.ctx.gpus(u)) or state not in (UnitState.PENDING, UnitState.RUNNING):
                self._over(key, report)
                del self.units[key]
            elif state is UnitState.PENDING:  # its attempt failed back to PENDING: it waits with its size now
                self._carry(u, report)
        for key, size in list(self.sizes.items()):
            if capacity.fits(size) or not sched.pending_of(size):
                self._over(key, report)
                del self.sizes[key]
        if UNPLANNED in self.waits.since and (capacity.total > 0 or not unplanned):
            self._over(UNPLANNED, report)

    def _give_up_running(self, capacity: Capacity, report: RunReport) -> None:
        """Running units that lost their GPUs wait; once the wait runs out they are cancelled and
        go back to PENDING, waiting with the units of their size."""
        ctx = self.ctx
        for handle, att in list(ctx.sched.running.items()):
            if capacity.fits(ctx.gpus(att.unit)):
                continue
            self.units[att.unit.id] = att.unit
            if not self.waits.waiting(att.unit.id, ctx.gpus(att.unit), capacity):
                ctx.executor.cancel(handle)
                ctx.sched.ended(handle)
                what = self.waits.what[att.unit.id]
                ctx.move(att.unit, UnitState.INTERRUPTED, attempt=att.id, error=what)
                ctx.move(att.unit, UnitState.PENDING, reason="gave up waiting for capacity")
                self._carry(att.unit, report)  # PENDING now: it waits with the units of its size

    def _carry(self, u: Unit, report: RunReport) -> None:
        """A running unit's own wait goes on as its size group's, from when it began."""
        key = size_key(self.ctx.gpus(u))
        self.waits.carry(u.id, key)
        self.sizes[key] = self.ctx.gpus(u)  # cleared with the group (also if the budget holds it)
        report.waiting.pop(u.id, None)
        del self.units[u.id]

    def _over(self, key: str, report: RunReport) -> None:
        self.waits.satisfied(key)
        report.waiting.pop(key, None)
