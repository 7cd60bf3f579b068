"""What this run's nodes bill and whether the budget still allows new launches.

The bill follows the same `cluster` events of the ledger that `pipeline cost` reads (one cost
model: pipeline/progress/cost.py). With a budget, every look projects $ spent + $ to finish from
the units' measured rates; new launches stop once that would pass `budget_usd`.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.progress.budget import Budget, Projection, Rates, Work, still_billing
from pipeline.progress.cost import NodeBill
from pipeline.records.nodes import NodeIdentity, spec_node
from pipeline.records.units import Unit, UnitState
from pipeline.run.context import RunContext
from pipeline.run.report import RunReport
from pipeline.run.setup import stop_command


class Billing:
    def __init__(self, ctx: RunContext, recipe_batches: dict[str, int], first_gap_s: float):
        self.ctx = ctx
        self.recipe_batches = recipe_batches  # the planner's: batches of each recipe's plan
        self.budget = Budget(ctx.spec.budget_usd, ctx.log)
        self.blocked = False  # the budget holds new launches
        self.rates = Rates()
        self.billed_before_usd = 0.0  # what earlier runs of this campaign cost (ledger), with a budget
        self.bill = NodeBill()  # what this run's nodes have billed: fed the cluster events it records
        self.looked: float | None = None  # when the budget was last looked at (time.monotonic)
        self.gap_s = first_gap_s  # the longest time between two looks so far

    def measure_history(self) -> None:
        """What earlier runs billed and how fast their units went: the budget's starting point."""
        from pipeline.progress.cost import cost_report

        now = time.time()
        report = cost_report(self.ctx.ledger.events(), now, default=spec_node(self.ctx.spec.cluster.pricing))
        self.billed_before_usd = report.total_usd
        for a in report.attempts:
            if a.outcome == "DONE":
                self.rates.observe(a.unit.split("/")[0], a.recipe or "", a.seconds(now) * a.gpus, a.batches)

    def check(self) -> None:
        """Whether the budget still allows new launches. The projection walks every unit: only
        with a budget to hold it against, once a tick and whenever planning added units."""
        now = time.monotonic()
        if self.looked is not None:
            self.gap_s = max(self.gap_s, now - self.looked)
        self.looked = now
        self.blocked = (
            self.ctx.spec.budget_usd is not None and self.ctx.sched.has_pending()
            and not self.budget.allows(self._projection(), self._still_billing)
        )

    def billed(self, event: dict[str, Any]) -> None:
        """A `cluster` event the run recorded: its nodes bill from its time on."""
        self.bill.snapshot(event["time"], [NodeIdentity.from_dict(n) for n in event["nodes"]])

    def end(self, event: dict[str, Any], report: RunReport) -> None:
        """The run's last `cluster` event; with a budget, the bill the run ends with."""
        self.billed(event)
        if self.ctx.spec.budget_usd is not None:
            report.spent_usd = self.billed_before_usd + self.bill.usd(event["time"])

    def _projection(self) -> Projection:
        ctx, now = self.ctx, time.perf_counter()
        sched, spec = ctx.sched, ctx.spec

        def batches(u: Unit) -> int | None:
            return sched.evals[(u.seed, u.recipe)].batches[u.shard] if u.kind == "eval" else None

        running = list(sched.running.values())
        work = [Work(u.kind, u.recipe, ctx.gpus(u), batches(u)) for u in sched.pending()] + [
            Work(a.unit.kind, a.unit.recipe, a.gpus, batches(a.unit), now - a.started) for a in running
        ] + [  # evals of seeds still training: not planned yet
            Work("eval", e.name, 1, self.recipe_batches.get(e.name))
            for s in spec.seeds if sched.state(Unit.train(s)) != UnitState.DONE
            for e in spec.evals
        ]
        spent = self.billed_before_usd + self.bill.usd(time.time())
        per_gpu_s = self.bill.usd_per_gpu_s()
        if per_gpu_s is None:  # no GPUs now: what the spec says one costs
            per_gpu_s = spec.cluster.pricing.usd_per_gpu_hour / 3600.0
        return Budget.project(spent, work, self.rates, per_gpu_s, spec.train.max_wallclock_s * ctx.gpus(Unit.train(0)),
                              next_check_usd=self.bill.usd_per_s * self.gap_s)

    def _still_billing(self) -> str:
        running = sorted(a.unit.id for a in self.ctx.sched.running.values())
        return still_billing(running, self.bill.alive, stop_command())
