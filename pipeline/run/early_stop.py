"""Evals whose `stop_when` rule holds end ESTIMATED: their running shards are cancelled (what they
flushed stays in the store for a later full run), their pending ones are not started."""

from __future__ import annotations

import time

from pipeline.progress.stopping import EarlyStops
from pipeline.records.units import UnitState
from pipeline.run.context import RunContext
from pipeline.run.failures import committed
from pipeline.run.report import RunReport

LIVE = {UnitState.PENDING, UnitState.RUNNING}


class EarlyStopper:
    def __init__(self, ctx: RunContext, commits: dict[tuple[int, str], dict[int, dict]]):
        self.ctx = ctx
        self.commits = commits  # the planner's shard commits: an eval stopped now is never merged in this run
        self.stops = EarlyStops(ctx.spec, ctx.store, every_s=min(ctx.spec.checkpoint_every_s, 30.0))

    def due(self) -> bool:
        return self.stops.due()

    def apply(self, report: RunReport) -> None:
        ctx, sched = self.ctx, self.ctx.sched
        evals = {
            key for key, shards in sched.evals.items()
            if ctx.spec.eval_recipe(key[1]).stop_when is not None and any(sched.state(u) in LIVE for u in shards.units)
        }
        if not evals:
            self.stops.last = self.stops.now()  # nothing to look at: not due again for a period
            return
        for seed, recipe, decision in self.stops.check(evals):
            for handle, att in list(sched.running.items()):
                if att.unit.kind == "eval" and (att.unit.seed, att.unit.recipe) == (seed, recipe):
                    ctx.executor.cancel(handle)
                    sched.ended(handle)
                    secs = time.perf_counter() - att.started
                    ctx.move(att.unit, UnitState.ESTIMATED, attempt=att.id, seconds=secs, **committed(ctx, att), reason=decision.why)
            for u in sched.evals[(seed, recipe)].units:
                if sched.state(u) is UnitState.PENDING:
                    ctx.move(u, UnitState.ESTIMATED, reason=decision.why)
            report.estimated[f"{seed}/{recipe}"] = decision.why
            self.commits.pop((seed, recipe), None)  # never merged in this run
            ctx.log(f"estimated seed {seed} {recipe}: {decision.why}; stopped by its stop_when rule")
