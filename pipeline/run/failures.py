"""A failed attempt: classified (pipeline/run/errors.py), then retried or failed by its unit's
RetryPolicy. Attempts on a node that left the cluster are handled as that node's death at once,
without waiting for Ray's own error."""

from __future__ import annotations

import time
from typing import Any

from pipeline.records.units import Unit, UnitState
from pipeline.run.context import RunContext
from pipeline.run.errors import Action, Failure, NodeLost, RetryPolicy, classify
from pipeline.run.report import RunReport
from pipeline.run.scheduler import Attempt


def committed(ctx: RunContext, att: Attempt) -> dict[str, Any]:
    """When a dying attempt last committed work, for the ledger's lost-work cost."""
    from pipeline.progress.view import committed_until

    until = committed_until(ctx.store, ctx.layout, att.unit.id, att.id)
    return {} if until is None else {"committed_until": until}


class Failures:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.history: dict[Unit, list[Failure]] = {}
        self.avoid: dict[Unit, tuple[str, ...]] = {}  # nodes a retry should stay off

    def tries(self, u: Unit) -> int:
        """The attempt number a new attempt of `u` is (1 for the first)."""
        return len(self.history.get(u, [])) + 1

    def policy(self, u: Unit) -> RetryPolicy:
        c = self.ctx.spec.cluster
        return RetryPolicy(self.ctx.spec.train.max_failures if u.kind == "train" else c.max_interruptions, c.retry_backoff_s)

    def on_error(self, att: Attempt, err: BaseException, secs: float, report: RunReport) -> None:
        ctx, u = self.ctx, att.unit
        nodes, dead = self._attempt_nodes(att)
        failure = classify(err, nodes, dead)
        history = self.history.setdefault(u, [])
        decision = self.policy(u).decide(failure, history)
        history.append(failure)
        done = committed(ctx, att)
        if decision.action is Action.RETRY:
            ctx.move(u, UnitState.INTERRUPTED, attempt=att.id, seconds=secs, **done, **failure.as_dict())
            ctx.move(u, UnitState.PENDING, not_before=time.monotonic() + decision.delay_s, reason=decision.reason, delay_s=decision.delay_s)
            self.avoid[u] = decision.avoid_nodes
            ctx.log(f"interrupted {u}: {decision.reason}; retrying in {decision.delay_s:.0f} s")
            return
        ctx.move(u, UnitState.FAILED, attempt=att.id, seconds=secs, reason=decision.reason, **done, **failure.as_dict())
        report.failed[u] = decision.reason
        ctx.log(f"FAILED {u}: {decision.reason}")

    def abandon_lost(self, gone: set[str], unreachable: set[str], report: RunReport) -> None:
        """Attempts placed on a node that left the alive set are cancelled and handled as a node
        death now. Ray's own error for them can take minutes (a vanished host's connections hang
        until gRPC keepalives give up) after its health check marked the node dead, while the
        attempt holds its unit and status shows it running (issue 22)."""
        sched = self.ctx.sched
        if not sched.running:
            return
        since = min(a.started_wall for a in sched.running.values()) - 60.0  # a task's clock may differ from ours
        placed: dict[str, list[dict]] = {}
        for e in self.ctx.ledger.events(since=since):
            if e.get("event") == "placed" and e.get("attempt"):
                placed.setdefault(e["attempt"], []).append(e)
        for handle, att in list(sched.running.items()):
            where = placed.get(att.id, [])
            lost = sorted({e.get("node_id") for e in where} & gone)
            if not lost:
                continue
            self.ctx.executor.abandon(handle, sorted({e["placement_group"] for e in where if e.get("placement_group")}))
            sched.ended(handle)
            how = ("the driver's host stopped reaching it; Ray still listed it" if lost[0] in unreachable
                   else "the driver saw it leave the cluster; not waiting for Ray's error")
            err = NodeLost(f"node {lost[0]} died under the attempt ({how})")
            self.on_error(att, err, time.perf_counter() - att.started, report)

    def _attempt_nodes(self, att: Attempt) -> tuple[set[str], set[str]]:
        """(nodes the attempt ran on, of those the ones no longer alive): from its placed events,
        read from the ledger's objects since the attempt began (not the whole history)."""
        nodes = {
            # by attempt id, from a minute before it started: a task's clock may differ from ours
            e["node_id"] for e in self.ctx.ledger.events(since=att.started_wall - 60.0)
            if e.get("event") == "placed" and e.get("attempt") == att.id and e.get("node_id")
        }
        alive = {n["NodeID"] for n in self.ctx.executor.nodes() if n["Alive"]}
        return nodes, nodes - alive
