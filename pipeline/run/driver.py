"""The campaign driver: turns a spec into units of work and runs them until none is left.

Ray does the distributed work (placement, worker groups, process death: pipeline/run/tasks.py, run
through pipeline/run/executor.py); the driver only decides *what* starts *when*. Each seed's
training goes first; its evals fill the GPUs training does not need, so one seed's evals run while
the next seed trains. Units whose commit object is already in the store are skipped, read from one
listing per seed (pipeline/run/resume.py).

The driver keeps the loop (submit what the scheduler says, wait for the next event, hand it on);
what happens on each kind of event is decided by a small part with its own state, as Ray Train's
controller hands decisions to its failure and scaling policies:
- `Scheduler` holds every unit's state and says which start next (pipeline/run/scheduler.py);
- `EvalPlanner` plans a trained seed's evals and merges an eval whose last shard is DONE;
- `Failures` classifies a failed attempt and retries or fails it, and handles the attempts of a
  node that left the cluster as that node's death;
- `Waiting` holds units waiting for GPUs the cluster lacks and says when to stop waiting;
- `Billing` follows what the nodes bill and holds new launches at the budget;
- `EarlyStopper` ends evals whose stop rule holds; `ClusterView` is the cluster as last looked at;
- `PodChecks` (pipeline/pods/checks.py) stops idle pods on its own thread.
The ledger writes its events in batches off the launch path. One lease per campaign keeps a
second driver out.
"""

from __future__ import annotations

import faulthandler
import io
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.pods.checks import OUTAGE_KEY, PodChecks
from pipeline.progress.stopping import estimate_key
from pipeline.records.artifacts import import_artifacts
from pipeline.records.campaign import CampaignChanged, check_campaign
from pipeline.records.ledger import Ledger
from pipeline.records.units import Unit, UnitState
from pipeline.run.billing import Billing
from pipeline.run.cluster_view import ClusterView
from pipeline.run.context import RunContext, unit_gpus
from pipeline.run.early_stop import EarlyStopper
from pipeline.run.errors import UnitError
from pipeline.run.executor import Executor, Launch, RayExecutor, UnitFns
from pipeline.run.failures import Failures
from pipeline.run.planner import EvalPlanner
from pipeline.run.report import RunReport
from pipeline.run.resume import CampaignScan
from pipeline.run.scheduler import Attempt, Scheduler
from pipeline.run.setup import campaign_lease, git_commit
from pipeline.run.tasks import eval_group_unit, eval_unit, train_unit
from pipeline.run.waiting import Waiting
from pipeline.spec import CampaignSpec
from pipeline.store import Layout, new_attempt_id, open_store

__all__ = ["CampaignChanged", "Driver", "RunReport", "UnitError", "check_campaign"]

TICK_S = 1.0  # how often the loop looks at the cluster (GPUs, nodes, budget)
EVENT_BATCH_S = 1.0  # the ledger writes what the loop recorded at most this often
# A turn of the loop waits at most TICK_S for Ray; one that has not come round after STALL_DUMP_S
# is stuck in a call (a vanished host, a lock): every thread's stack goes to stderr (the job's log),
# from faulthandler's own C thread, so also while a C call holds the GIL.
STALL_DUMP_S = 30.0


def _stall_dump(arm: bool) -> None:
    try:
        if arm:
            faulthandler.dump_traceback_later(STALL_DUMP_S, file=sys.stderr)
        else:
            faulthandler.cancel_dump_traceback_later()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a stderr with no file descriptor: no dumps
        pass


class Driver:
    def __init__(
        self,
        spec: CampaignSpec,
        log: Callable[[str], None] = print,
        connect: Callable[[], None] | None = None,
        train_fn: Callable[..., dict] = train_unit,
        eval_fn: Callable[..., dict] = eval_unit,
        group_eval_fn: Callable[..., dict] = eval_group_unit,
        take_over: bool = False,
        progress: Any = None,
        executor: Callable[[UnitFns], Executor] | None = None,
        pods: Callable[[float, Callable[[str], None]], Any] | None = None,
    ):
        """`connect` starts or joins Ray; it is called only when there is work to run, so a
        finished campaign re-runs (and reports) without a cluster. `train_fn` / `eval_fn` are what
        an attempt runs (bench/makespan_bench.py swaps in simulated work of the same shape);
        `executor` builds what runs them (Ray by default; pipeline.run.executor.ThreadExecutor for
        fake units). `progress` (pipeline/progress/live.py) is started with this run's id. `pods`
        makes the campaign's RunPod watch once Ray is joined, given idle_stop_min and the log
        (`pipeline run` passes pipeline.pods.campaign.CampaignPods.for_cluster: None where the
        cluster has no pods or there is no RunPod key); without it no pod is watched or stopped."""
        self.spec = spec
        self.connect = connect
        self.fns = (train_fn, eval_fn, group_eval_fn)
        self.make_executor = executor or RayExecutor
        self.take_over = take_over
        self.progress = progress
        self.pods = pods
        self.store = open_store(spec.store)
        self.layout = Layout(spec.name)
        self.log = log
        self.ledger = Ledger(self.store, self.layout, run_id=new_attempt_id(), batch_s=EVENT_BATCH_S, log=log)
        self.sched = Scheduler(lambda u: unit_gpus(spec, u))
        self.ctx = RunContext(spec, self.store, self.layout, self.ledger, self.sched, log)
        self.lease = campaign_lease(self.store, spec, self.ledger.run_id)
        self.planner = EvalPlanner(self.ctx)
        self.billing = Billing(self.ctx, self.planner.recipe_batches, first_gap_s=TICK_S)
        self.cluster = ClusterView(self.ctx, TICK_S, on_record=self.billing.billed)
        self.failures = Failures(self.ctx)
        self.waiting = Waiting(self.ctx)
        self.stops = EarlyStopper(self.ctx, self.planner.commits)
        self.pod_watch: PodChecks | None = None  # the RunPod checks, on their own thread (pipeline/pods/checks.py)

    # --- a run ------------------------------------------------------------------------------

    def run(self) -> RunReport:
        t_start = time.perf_counter()
        report = RunReport(self.spec)
        spec, layout = self.spec, self.layout
        self.store.clean_tmp(layout.root)  # what interrupted writes of an earlier run left
        scan = CampaignScan.read(self.store, spec)
        evals_left = {s: [e for e in spec.evals if not scan.finished(s, e)] for s in spec.seeds}
        if all(scan.trained(s) for s in spec.seeds) and not any(evals_left.values()):
            return self._all_done(scan, report)
        check_campaign(spec, self.store)
        replaced = self.lease.acquire(self.take_over)
        if replaced is not None and not replaced.released:
            self.log(f"took the campaign over from {replaced.describe(time.time())}")
        self.lease.start_heartbeat()
        try:
            import_artifacts(spec, self.store, self.log)  # eval-only seeds: their artifact is their training's commit
            for seed in spec.artifacts or {}:  # each has its manifest now (imported here or by another process)
                scan.seeds[seed].trained = True
            self.store.put_new_json(layout.run(self.ledger.run_id), {
                "version": 1, "run": self.ledger.run_id, "start": time.time(), "spec": spec.model_dump(mode="json"),
            })
            if spec.budget_usd is not None:
                self.billing.measure_history()
            if self.progress is not None:
                self.progress.start(self.ledger.run_id)
            try:
                self._run(report, evals_left, scan)
            finally:
                self._close(report)
        finally:
            self.lease.release()
        report.wall_s = time.perf_counter() - t_start
        return report

    def _all_done(self, scan: CampaignScan, report: RunReport) -> RunReport:
        """Every unit is DONE (or ESTIMATED) already: say so, touching no cluster and no lease."""
        spec = self.spec
        check_campaign(spec, self.store)
        report.skipped = [Unit.train(s) for s in spec.seeds] + [Unit.eval(s, e.name) for s in spec.seeds for e in spec.evals]
        for s in spec.seeds:
            for e in spec.evals:
                if not scan.eval(s, e.name).result:
                    report.estimated[f"{s}/{e.name}"] = self.store.get_json(estimate_key(self.layout, s, e))["why"]
        self.log(f"every unit is already DONE{' or ESTIMATED' if report.estimated else ''} in {self.store.uri}")
        return report

    def _close(self, report: RunReport) -> None:
        try:
            if self.progress is not None:
                self.progress.stop()
            if self.pod_watch is not None:
                self.pod_watch.stop()
            if self.ctx.executor is not None:
                self.ctx.executor.close()
        finally:
            if (end := self.cluster.end()) is not None:
                self.billing.end(end, report)
            self.ledger.close()  # every event recorded is in the store before the run says it ended

    def _run(self, report: RunReport, evals_left: dict[int, list], scan: CampaignScan) -> None:
        spec = self.spec
        self.planner.scan = scan
        for seed in spec.seeds:
            u = Unit.train(seed)
            done = scan.trained(seed)
            self.sched.add(u, UnitState.DONE if done else UnitState.PENDING)
            if done:
                report.skipped.append(u)
                self.planner.unplanned.append(seed)
            report.skipped += [Unit.eval(seed, e.name) for e in spec.evals if e not in evals_left[seed]]
        if self.connect is not None:
            self.connect()
        self._start_executor()
        self._look(force=True)
        self._plan(report)
        if report.skipped:
            self.log(f"skipping {len(report.skipped)} unit(s) already DONE in {self.store.uri}")
        self._loop(report)
        for line in self.pod_watch.still_billing() if self.pod_watch is not None else []:
            self.log(line)
        if self.lease.lost.is_set():
            holder = self.lease.holder()
            report.lease_lost = holder.describe(time.time()) if holder else "another driver"
            self.log(f"the campaign was taken over by {report.lease_lost}; stopping (running attempts are fenced)")
        left = [] if report.budget else self.sched.in_state(UnitState.PENDING)  # the budget says why those wait
        report.blocked = [u for u in left if not self.waiting.gave_up(u, report)] + [
            Unit.eval(s, e.name) for s in spec.seeds for e in evals_left[s]
            if self.sched.state(Unit.train(s)) != UnitState.DONE and s not in self.planner.unplanned
        ]

    def _start_executor(self) -> None:
        spec = self.spec
        # the driver's command line: what a maintainer reruns (the manifest's provenance)
        context = {"git_commit": git_commit(), "spec_fingerprint": spec.fingerprint(), "command": shlex.join(sys.argv)}
        self.ctx.executor = self.make_executor(UnitFns(*self.fns, spec.model_dump(mode="json"), spec.store, context, self.ledger.run_id))
        pods = self.pods(spec.cluster.idle_stop_min, self.log) if self.pods is not None else None
        if pods is not None:
            # an API outage is a `waiting` entry of the ledger while it lasts: `pipeline status` shows it
            self.pod_watch = PodChecks(pods, self.log, lambda what: self.ledger.waiting(OUTAGE_KEY, what)).start()

    def _loop(self, report: RunReport) -> None:
        """Until nothing is left to run or wait for (or another driver took over): plan, stop
        early, launch, merge, then wait for the next attempt to end and hand it on."""
        try:
            while not self.lease.lost.is_set():
                _stall_dump(arm=True)
                if not self._turn(report):
                    break
        finally:
            _stall_dump(arm=False)

    def _turn(self, report: RunReport) -> bool:
        """One turn of the loop; False when nothing is left to run or wait for."""
        self._plan(report)
        self.planner.scan_fresh = False  # seeds planned from now on are listed again first
        if self.stops.due():
            self.stops.apply(report)
        if self.pod_watch is not None:  # stop pods no unit has used or can use for idle_stop_min
            self.pod_watch.tick(self.waiting.pod_demand(self.cluster.capacity, self.billing.blocked, self.failures.avoid))
        self._launch(report)
        self.planner.merge_ready()  # bookkeeping only once the GPUs have their next work
        if self.billing.blocked:
            report.budget = self.billing.budget.stopped  # PENDING units wait for no GPUs: the budget holds them
        if not self.waiting.keep_going(self.cluster.capacity, self.billing.blocked, self.planner.unplanned, report):
            return False
        ended = self.ctx.executor.wait(list(self.sched.running), TICK_S)
        if not self.sched.running:
            time.sleep(TICK_S)
        self._look(force=not ended)
        for handle in ended:
            self._ended(handle, report)
        if self.cluster.gone:
            self.failures.abandon_lost(self.cluster.take_gone(), self.cluster.unreachable, report)
        return True

    def _look(self, force: bool = False) -> None:
        """The cluster (at most once a TICK_S, or when nothing ended), then the budget."""
        if self.cluster.look(force):
            self.billing.check()

    def _plan(self, report: RunReport) -> None:
        if self.planner.plan_ready(self.cluster.capacity, report):
            self.billing.check()  # before anything planned now can launch

    def _launch(self, report: RunReport) -> None:
        if self.billing.blocked:
            return
        for u in self.sched.launches(self.cluster.capacity):
            attempt, gpus = new_attempt_id(), self.ctx.gpus(u)
            att = Attempt(u, attempt, time.perf_counter(), gpus)
            handle = self.ctx.executor.submit(Launch(u, attempt, gpus, self.failures.avoid.get(u, ())))
            self.sched.started(handle, att)
            report.attempts[u] = report.attempts.get(u, 0) + 1
            self.ledger.record(u, UnitState.RUNNING, attempt=attempt, n=self.failures.tries(u), gpus=gpus)
            self.log(f"start  {u}")

    def _ended(self, handle: Any, report: RunReport) -> None:
        """An attempt ended: its result, or its error handed to the failure policy."""
        att = self.sched.ended(handle)
        u, secs = att.unit, time.perf_counter() - att.started
        try:
            out = self.ctx.executor.result(handle)
        except Exception as err:  # noqa: BLE001 - classified by Failures, never swallowed
            self.failures.on_error(att, err, secs, report)
            return
        # the batches this attempt scored (a resumed shard's earlier ones were paid for before)
        batches = out.get("batches", 0) - out.get("run", {}).get("resumed_batches", 0) if u.kind == "eval" else None
        self.ctx.move(u, UnitState.DONE, attempt=att.id, seconds=secs, batches=batches)
        self.billing.rates.observe(u.kind, u.recipe, secs * att.gpus, batches)
        report.done.append(u)
        report.durations[u.id] = secs
        if u.kind == "train":
            self.log(f"done   {u}  {secs:6.1f}s  {out.get('steps', '?')} steps")
            self.planner.unplanned.append(u.seed)
        else:
            self.log(f"done   {u}  {secs:6.1f}s  {out['batches']} batches")
            self.planner.shard_done(u, out)
