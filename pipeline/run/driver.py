"""The campaign driver: turns a spec into units of work and runs them until none is left.

Ray does the distributed work (placement, worker groups, process death: pipeline/run/tasks.py, run
through pipeline/run/executor.py); the driver only decides *what* starts *when*. Each seed's training
goes first; its evals fill the GPUs training does not need, so one seed's evals run while the next
seed trains. Units whose commit object is already in the store are skipped, read from one listing
per seed (pipeline/run/resume.py).

The loop is small because the decisions are made by small objects (README "Scale", "Errors and
retries", "Waiting for GPUs"): the `Scheduler` holds every unit's state and says which start next,
`pipeline.run.errors` classifies a failed attempt and says retry or fail, `CapacityWaits` says which
units wait for GPUs the cluster does not have and when to stop waiting, `Budget` and `EarlyStops`
say when to stop early. The ledger writes its events in batches off the launch path. One lease per
campaign keeps a second driver out.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.records.artifacts import import_artifacts
from pipeline.records.campaign import CampaignChanged, check_campaign
from pipeline.run.errors import Action, Failure, NodeLost, RetryPolicy, UnitError, classify
from pipeline.run.executor import Executor, Launch, RayExecutor, UnitFns
from pipeline.run.lease import Lease
from pipeline.records.ledger import Ledger
from pipeline.pods.checks import OUTAGE_KEY, PodChecks
from pipeline.pods.idle import Demand
from pipeline.progress.budget import Budget, Projection, Rates, Work, still_billing, stop_command
from pipeline.progress.cost import NodeBill
from pipeline.records.nodes import NodeIdentity, node_identity, spec_node
from pipeline.progress.stopping import EarlyStops, estimate_key
from pipeline.run.resume import LIST_THREADS, CampaignScan
from pipeline.run.scheduler import Attempt, Capacity, CapacityWaits, Scheduler
from pipeline.spec import CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, new_attempt_id, normalize_uri, open_store
from pipeline.run.tasks import eval_group_unit, eval_unit, train_unit
from pipeline.records.units import Unit, UnitState

__all__ = ["CampaignChanged", "Driver", "RunReport", "UnitError", "check_campaign", "resolve_paths"]

UNPLANNED = "evals not planned"  # the CapacityWaits key of trained seeds' evals on a cluster with no GPUs


def size_key(gpus: float) -> str:
    """The CapacityWaits key of the PENDING units that need `gpus` GPUs: they wait as one."""
    return f"units of {gpus:g} GPUs"


def unit_gpus(spec: CampaignSpec, u: Unit) -> float:
    """The GPUs a unit holds: a training group's world size, a TTT unit's ttt.gpus, a shard's one
    (the Scheduler's `slots`; `pipeline plan` simulates with the same)."""
    t = spec.train
    return t.world_size * t.gpus_per_worker if u.kind == "train" else spec.eval_recipe(u.recipe).gpus


def default_shards(capacity: Capacity) -> int:
    """The shards an eval without `shards` is cut into: one per GPU of the cluster as it is now."""
    return max(1, int(capacity.total))


TICK_S = 1.0  # how often the loop looks at the cluster (GPUs, nodes, budget)
EVENT_BATCH_S = 1.0  # the ledger writes what the loop recorded at most this often



def resolve_paths(spec: CampaignSpec, base: Path | None = None) -> CampaignSpec:
    """Make local paths absolute, so Ray workers (other cwd) see the same files; one spelling per
    store (`store`, `./store` and `file://store` are one place)."""
    base = base or Path.cwd()

    def absolute(p: str) -> str:
        return str((base / p).resolve()) if "://" not in p else p

    data = spec.data.model_copy(update={"shards": absolute(spec.data.shards), "tokenizer": absolute(spec.data.tokenizer)})
    arts = {s: absolute(p) for s, p in spec.artifacts.items()} if spec.artifacts is not None else None
    train = spec.train.model_copy(update={"script": absolute(spec.train.script)}) if isinstance(spec.train, ScriptTrain) else spec.train
    return spec.model_copy(update={"data": data, "store": normalize_uri(spec.store, base), "artifacts": arts, "train": train})


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def campaign_lease(store: Store, spec: CampaignSpec, run_id: str | None = None) -> Lease:
    return Lease(store, Layout(spec.name).lease_dir, f"campaign {spec.name!r} in {store.uri}", "driver", token=run_id)


# --- policies ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    spec: CampaignSpec
    done: list[Unit] = field(default_factory=list)  # ran to DONE in this run
    skipped: list[Unit] = field(default_factory=list)  # DONE before this run
    failed: dict[Unit, str] = field(default_factory=dict)
    estimated: dict[str, str] = field(default_factory=dict)  # "seed/recipe" → why its stop rule ended it
    budget: str | None = None  # why units were left PENDING by the budget
    spent_usd: float | None = None  # with a budget: the campaign's bill when the run ended (`pipeline cost`'s total)
    blocked: list[Unit] = field(default_factory=list)  # could not run: their training failed
    waiting: dict[str, str] = field(default_factory=dict)  # unit → what it waited for in vain (left PENDING)
    lease_lost: str | None = None  # another driver took the campaign over mid-run
    durations: dict[str, float] = field(default_factory=dict)  # unit id → seconds, this run
    attempts: dict[Unit, int] = field(default_factory=dict)  # attempts started in this run, per unit
    wall_s: float = 0.0

    def ran(self) -> str:
        """What this run ran: every unit it started, however its attempts ended (a unit that ran
        twice and failed, or was stopped by its rule, ran)."""
        n, tries = len(self.attempts), sum(self.attempts.values())
        if not n:
            return "ran 0 unit(s)"
        ended = {"DONE": len(self.done), "FAILED": sum(1 for u in self.failed if u in self.attempts)}
        ended["unfinished"] = n - len({*self.done, *self.failed} & set(self.attempts))
        parts = ", ".join(f"{k} {v}" for k, v in ended.items() if v)
        return f"ran {n} unit(s) in {tries} attempt(s) ({parts})"


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
    ):
        """`connect` starts or joins Ray; it is called only when there is work to run, so a
        finished campaign re-runs (and reports) without a cluster. `train_fn` / `eval_fn` are what
        an attempt runs (bench/makespan_bench.py swaps in simulated work of the same shape);
        `executor` builds what runs them (Ray by default; pipeline.run.executor.ThreadExecutor for
        fake units). `progress` (pipeline/progress/live.py) is started with this run's id."""
        self.spec = spec
        self.connect = connect
        self.fns = (train_fn, eval_fn, group_eval_fn)
        self.make_executor = executor or RayExecutor
        self.executor: Executor | None = None
        self.take_over = take_over
        self.store = open_store(spec.store)
        self.layout = Layout(spec.name)
        self.log = log
        self.ledger = Ledger(self.store, self.layout, run_id=new_attempt_id(), batch_s=EVENT_BATCH_S, log=log)
        self.sched = Scheduler(self._slots)
        self.lease = campaign_lease(self.store, spec, self.ledger.run_id)
        self.waits = CapacityWaits(spec.cluster.wait_for_capacity_s, log, record=self.ledger.waiting)
        self.waiting_units: dict[str, Unit] = {}  # CapacityWaits keys of running units that lost their GPUs
        self.waiting_sizes: dict[str, float] = {}  # CapacityWaits keys of PENDING units, one per GPU size
        self.failures: dict[Unit, list[Failure]] = {}
        self.avoid: dict[Unit, tuple[str, ...]] = {}  # nodes a retry should stay off
        self.unplanned: list[int] = []  # seeds whose training is done but whose evals are not planned
        self.to_merge: set[tuple[int, str]] = set()  # evals whose last shard just finished
        self.commits: dict[tuple[int, str], dict[int, dict]] = {}  # shards' done.json as their attempts returned them
        self.progress = progress
        self.stops = EarlyStops(spec, self.store, every_s=min(spec.checkpoint_every_s, 30.0))
        self.budget = Budget(spec.budget_usd, log)
        self.budget_blocked = False
        self.rates = Rates()
        self.billed_before_usd = 0.0  # what earlier runs of this campaign cost (ledger), with a budget
        self.bill = NodeBill()  # what this run's nodes have billed: fed the cluster events it records
        self.budget_looked: float | None = None  # when the budget was last looked at (time.monotonic)
        self.budget_gap_s = TICK_S  # the longest time between two looks so far
        self.recipe_batches: dict[str, int] = {}  # batches of a recipe's plan (the same for every seed)
        self.geometry: dict[str, tuple[int, int]] = {}  # recipe → (windows, batches) for new plans
        self.nodes: list[dict] | None = None  # the cluster as last recorded in the ledger
        self.alive: set[str] | None = None  # the nodes alive at the last look
        self.gone: set[str] = set()  # nodes seen leaving the alive set, not acted on yet
        self.unreachable: set[str] = set()  # of the nodes Ray lists alive, those the driver's host cannot reach
        self.capacity = Capacity()
        self.looked = -1e18  # when the loop last looked at the cluster (time.monotonic)
        self.scan: CampaignScan | None = None
        self.scan_fresh = True  # the scan was taken as this run began
        self.pod_watch: PodChecks | None = None  # the RunPod checks, on their own thread (pipeline/pods/checks.py)

    def _slots(self, u: Unit) -> float:
        return unit_gpus(self.spec, u)

    def _policy(self, u: Unit) -> RetryPolicy:
        c = self.spec.cluster
        return RetryPolicy(self.spec.train.max_failures if u.kind == "train" else c.max_interruptions, c.retry_backoff_s)

    # --- a run ------------------------------------------------------------------------------

    def run(self) -> RunReport:
        t_start = time.perf_counter()
        report = RunReport(self.spec)
        spec, layout = self.spec, self.layout
        self.store.clean_tmp(layout.root)  # what interrupted writes of an earlier run left
        scan = CampaignScan.read(self.store, spec)
        evals_left = {s: [e for e in spec.evals if not scan.finished(s, e)] for s in spec.seeds}
        if all(scan.trained(s) for s in spec.seeds) and not any(evals_left.values()):
            check_campaign(spec, self.store)
            report.skipped = [Unit.train(s) for s in spec.seeds] + [Unit.eval(s, e.name) for s in spec.seeds for e in spec.evals]
            for s in spec.seeds:
                for e in spec.evals:
                    if not scan.eval(s, e.name).result:
                        report.estimated[f"{s}/{e.name}"] = self.store.get_json(estimate_key(layout, s, e))["why"]
            self.log(f"every unit is already DONE{' or ESTIMATED' if report.estimated else ''} in {self.store.uri}")
            return report
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
                self._measure_history()
            if self.progress is not None:
                self.progress.start(self.ledger.run_id)
            try:
                self._run(report, evals_left, scan)
            finally:
                try:
                    if self.progress is not None:
                        self.progress.stop()
                    if self.pod_watch is not None:
                        self.pod_watch.stop()
                    if self.executor is not None:
                        self.executor.close()
                finally:
                    self._end_bill(report)
                    self.ledger.close()  # every event recorded is in the store before the run says it ended
        finally:
            self.lease.release()
        report.wall_s = time.perf_counter() - t_start
        return report

    def _run(self, report: RunReport, evals_left: dict[int, list], scan: CampaignScan) -> None:
        spec = self.spec
        self.scan = scan
        for seed in spec.seeds:
            u = Unit.train(seed)
            done = scan.trained(seed)
            self.sched.add(u, UnitState.DONE if done else UnitState.PENDING)
            if done:
                report.skipped.append(u)
                self.unplanned.append(seed)
            report.skipped += [Unit.eval(seed, e.name) for e in spec.evals if e not in evals_left[seed]]
        if self.connect is not None:
            self.connect()
        # the driver's command line: what a maintainer reruns (the manifest's provenance)
        context = {"git_commit": git_commit(), "spec_fingerprint": spec.fingerprint(), "command": shlex.join(sys.argv)}
        self.executor = self.make_executor(UnitFns(*self.fns, spec.model_dump(mode="json"), spec.store, context, self.ledger.run_id))
        pods = self.executor.watch_pods(spec.cluster.idle_stop_min, self.log)
        if pods is not None:
            # an API outage is a `waiting` entry of the ledger while it lasts: `pipeline status` shows it
            self.pod_watch = PodChecks(pods, self.log, lambda what: self.ledger.waiting(OUTAGE_KEY, what)).start()
        self._look(force=True)
        self._plan_ready(report)
        if report.skipped:
            self.log(f"skipping {len(report.skipped)} unit(s) already DONE in {self.store.uri}")
        while not self.lease.lost.is_set():
            self._plan_ready(report)
            self.scan_fresh = False  # seeds planned from now on are listed again first
            if self.stops.due():
                self._early_stops(report)
            if self.pod_watch is not None:
                self.pod_watch.tick(self._pod_demand())  # stop pods no unit has used or can use for idle_stop_min
            self._launch(report)
            # Bookkeeping only once the GPUs have their next work, so they never wait on it.
            for seed, recipe in sorted(self.to_merge):
                self._merge(seed, recipe)
            self.to_merge.clear()
            if not self._keep_waiting(report):
                break
            ended = self.executor.wait(list(self.sched.running), TICK_S)
            if not self.sched.running:
                time.sleep(TICK_S)
            self._look(force=not ended)
            for handle in ended:
                self._ended(handle, report)
            if self.gone:
                self._abandon_lost(report)
        for line in self.pod_watch.still_billing() if self.pod_watch is not None else []:
            self.log(line)
        if self.lease.lost.is_set():
            holder = self.lease.holder()
            report.lease_lost = holder.describe(time.time()) if holder else "another driver"
            self.log(f"the campaign was taken over by {report.lease_lost}; stopping (running attempts are fenced)")
        left = [] if report.budget else self.sched.in_state(UnitState.PENDING)  # the budget says why those wait
        report.blocked = [u for u in left if u.id not in report.waiting and size_key(self._slots(u)) not in report.waiting] + [
            Unit.eval(s, e.name) for s in spec.seeds for e in evals_left[s]
            if self.sched.state(Unit.train(s)) != UnitState.DONE and s not in self.unplanned
        ]

    def _look(self, force: bool = False) -> None:
        """At most once a TICK_S (or when nothing ended): the cluster's GPUs and nodes (pods die,
        replacements join), and whether the budget still allows new launches."""
        now = time.monotonic()
        if not force and now - self.looked < TICK_S:
            return
        self.looked = now
        self.capacity = replace(self.executor.capacity(), span=self.spec.cluster.groups_span_nodes)
        self._record_cluster()
        self._check_budget()

    def _check_budget(self) -> None:
        """Whether the budget still allows new launches. The projection walks every unit: only
        with a budget to hold it against, once a tick and whenever planning added units."""
        now = time.monotonic()
        if self.budget_looked is not None:
            self.budget_gap_s = max(self.budget_gap_s, now - self.budget_looked)
        self.budget_looked = now
        self.budget_blocked = (
            self.spec.budget_usd is not None and self.sched.has_pending()
            and not self.budget.allows(self._projection(), self._still_billing)
        )

    def _launch(self, report: RunReport) -> None:
        if self.budget_blocked:
            return
        for u in self.sched.launches(self.capacity):
            attempt, gpus = new_attempt_id(), self._slots(u)
            att = Attempt(u, attempt, time.perf_counter(), gpus)
            handle = self.executor.submit(Launch(u, attempt, gpus, self.avoid.get(u, ())))
            self.sched.started(handle, att)
            report.attempts[u] = report.attempts.get(u, 0) + 1
            self.ledger.record(u, UnitState.RUNNING, attempt=attempt, n=len(self.failures.get(u, [])) + 1, gpus=gpus)
            self.log(f"start  {u}")

    def _ended(self, handle: Any, report: RunReport) -> None:
        att = self.sched.ended(handle)
        u, secs = att.unit, time.perf_counter() - att.started
        try:
            out = self.executor.result(handle)
        except Exception as err:  # noqa: BLE001 - classified below, never swallowed
            self._on_error(att, err, secs, report)
            return
        # the batches this attempt scored (a resumed shard's earlier ones were paid for before)
        batches = out.get("batches", 0) - out.get("run", {}).get("resumed_batches", 0) if u.kind == "eval" else None
        self.sched.move(u, UnitState.DONE)
        self.ledger.record(u, UnitState.DONE, attempt=att.id, seconds=secs, batches=batches)
        self.rates.observe(u.kind, u.recipe, secs * att.gpus, batches)
        report.done.append(u)
        report.durations[u.id] = secs
        if u.kind == "train":
            self.log(f"done   {u}  {secs:6.1f}s  {out.get('steps', '?')} steps")
            self.unplanned.append(u.seed)
        else:
            self.log(f"done   {u}  {secs:6.1f}s  {out['batches']} batches")
            if out.get("shard") == u.shard:  # its commit object: the merge need not read it again
                self.commits.setdefault((u.seed, u.recipe), {})[u.shard] = out
            if self.sched.evals[(u.seed, u.recipe)].complete:
                self.to_merge.add((u.seed, u.recipe))

    # --- planning and merging ---------------------------------------------------------------

    def _plan_ready(self, report: RunReport) -> None:
        """Evals are planned once their seed is trained and the cluster has GPUs to shard them
        over; the shard count follows the cluster's GPUs now, not when the driver started. The
        plans (plan.json, written once) are read or written in parallel: a resumed sweep has
        hundreds of them."""
        if not self.unplanned or self.capacity.total <= 0:
            return
        from workers.plan import ensure_plan, plan_geometry  # data-plane imports only when there is work

        seeds, self.unplanned = self.unplanned, []
        for seed in seeds:
            # trained in this run, or planned later than the run's start (no GPUs then): what other
            # processes (a fenced driver, `pipeline eval`) committed since the scan counts too
            if not self.scan_fresh or not self.scan.trained(seed):
                self.scan.refresh(self.store, seed)
        todo = [(s, r) for s in seeds for r in self.spec.evals if not self.scan.eval(s, r.name).result]
        for r in {r.name: r for _, r in todo}.values():
            if r.name not in self.geometry and not all(self.scan.eval(s, r.name).plan for s, q in todo if q is r):
                self.geometry[r.name] = plan_geometry(self.spec, r)
        shards = default_shards(self.capacity)
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            plans = list(pool.map(
                lambda sr: ensure_plan(self.store, self.spec, sr[0], sr[1], shards, self.geometry.get(sr[1].name)), todo,
            ))
        for (seed, recipe), plan in zip(todo, plans, strict=True):
            self._track_eval(seed, recipe, plan, report)
        self._check_budget()  # before anything planned now can launch

    def _track_eval(self, seed: int, recipe, plan: dict, report: RunReport) -> None:
        """One unit per shard of a planned eval, DONE or ESTIMATED where the store says so."""
        scan = self.scan.eval(seed, recipe.name)
        est = estimate_key(self.layout, seed, recipe)
        estimated = est in scan.estimates
        self.recipe_batches[recipe.name] = plan["batches"]
        states = [
            UnitState.DONE if k in scan.done else UnitState.ESTIMATED if estimated else UnitState.PENDING
            for k in range(len(plan["shards"]))
        ]
        shards = self.sched.add_eval(seed, recipe.name, [len(b) for b in plan["shards"]], states)
        report.skipped += [u for u, st in zip(shards.units, states, strict=True) if st is not UnitState.PENDING]
        if estimated:
            report.estimated[f"{seed}/{recipe.name}"] = self.store.get_json(est)["why"]
        if shards.complete:
            self.to_merge.add((seed, recipe.name))

    def _merge(self, seed: int, recipe: str) -> None:
        from workers.result import merge_result  # numpy only: the driver never imports torch for this

        r = merge_result(self.store, self.layout, seed, self.spec.eval_recipe(recipe), self.commits.pop((seed, recipe), None))
        note = f"; {len(r['conflicts'])} batch(es) scored differently by two attempts" if r.get("conflicts") else ""
        self.log(f"result seed {seed} {recipe}: val_bpb {r['val_bpb']:.6f} ({r['shards']} shard(s)){note}")

    # --- cost, budget and early stops -------------------------------------------------------

    def _measure_history(self) -> None:
        """What earlier runs billed and how fast their units went: the budget's starting point."""
        from pipeline.progress.cost import cost_report

        now = time.time()
        report = cost_report(self.ledger.events(), now, default=spec_node(self.spec.cluster.pricing))
        self.billed_before_usd = report.total_usd
        for a in report.attempts:
            if a.outcome == "DONE":
                self.rates.observe(a.unit.split("/")[0], a.recipe or "", a.seconds(now) * a.gpus, a.batches)

    def _record_cluster(self) -> None:
        """A `cluster` event when the nodes (or their liveness) changed; this run's bill follows
        the same events `pipeline cost` reads."""
        raw = self.executor.nodes()
        alive = {n["NodeID"] for n in raw if n["Alive"]}
        if self.alive is not None:
            self.gone |= self.alive - alive
        self.alive = alive
        unreachable = {n["NodeID"]: n["Unreachable"] for n in raw if n.get("Unreachable") is not None}
        for node, silent in unreachable.items():
            if node not in self.unreachable:
                self.log(f"node {node[:12]} has not answered this host's connects for {silent:.1f} s: treated as gone (Ray still lists it)")
        self.unreachable = set(unreachable)
        nodes = [node_identity(n, self.spec.cluster.pricing).as_dict() for n in raw]
        nodes.sort(key=lambda n: n["node_id"])
        if nodes != self.nodes:
            self.nodes = nodes
            self._billed(self.ledger.cluster(nodes))

    def _billed(self, event: dict[str, Any]) -> None:
        self.bill.snapshot(event["time"], [NodeIdentity.from_dict(n) for n in event["nodes"]])

    def _end_bill(self, report: RunReport) -> None:
        """The run's last `cluster` event: its nodes billed until now (the ledger's end of this run,
        however long it waited since its last unit), and with a budget the bill it ends with."""
        if self.nodes is None:
            return
        end = self.ledger.cluster(self.nodes)
        self._billed(end)
        if self.spec.budget_usd is not None:
            report.spent_usd = self.billed_before_usd + self.bill.usd(end["time"])

    def _projection(self) -> Projection:
        now = time.perf_counter()
        t = self.spec.train

        def batches(u: Unit) -> int | None:
            return self.sched.evals[(u.seed, u.recipe)].batches[u.shard] if u.kind == "eval" else None

        running = list(self.sched.running.values())
        work = [Work(u.kind, u.recipe, self._slots(u), batches(u)) for u in self.sched.pending()] + [
            Work(a.unit.kind, a.unit.recipe, a.gpus, batches(a.unit), now - a.started) for a in running
        ] + [  # evals of seeds still training: not planned yet
            Work("eval", e.name, 1, self.recipe_batches.get(e.name))
            for s in self.spec.seeds if self.sched.state(Unit.train(s)) != UnitState.DONE
            for e in self.spec.evals
        ]
        spent = self.billed_before_usd + self.bill.usd(time.time())
        per_gpu_s = self.bill.usd_per_gpu_s()
        if per_gpu_s is None:  # no GPUs now: what the spec says one costs
            per_gpu_s = self.spec.cluster.pricing.usd_per_gpu_hour / 3600.0
        return Budget.project(spent, work, self.rates, per_gpu_s, t.max_wallclock_s * self._slots(Unit.train(0)),
                              next_check_usd=self.bill.usd_per_s * self.budget_gap_s)

    def _still_billing(self) -> str:
        running = sorted(a.unit.id for a in self.sched.running.values())
        return still_billing(running, self.bill.alive, stop_command())

    def _early_stops(self, report: RunReport) -> None:
        """Evals whose stop rule holds now end ESTIMATED: their running shards are cancelled (what
        they flushed stays in the store for a later full run), their pending ones not started."""
        live = {UnitState.PENDING, UnitState.RUNNING}
        evals = {
            key for key, shards in self.sched.evals.items()
            if self.spec.eval_recipe(key[1]).stop_when is not None and any(self.sched.state(u) in live for u in shards.units)
        }
        if not evals:
            self.stops.last = self.stops.now()  # nothing to look at: not due again for a period
            return
        for seed, recipe, decision in self.stops.check(evals):
            for handle, att in list(self.sched.running.items()):
                if att.unit.kind == "eval" and (att.unit.seed, att.unit.recipe) == (seed, recipe):
                    self.executor.cancel(handle)
                    self.sched.ended(handle)
                    secs = time.perf_counter() - att.started
                    self.sched.move(att.unit, UnitState.ESTIMATED)
                    self.ledger.record(att.unit, UnitState.ESTIMATED, attempt=att.id, seconds=secs, **self._committed(att), reason=decision.why)
            for u in self.sched.evals[(seed, recipe)].units:
                if self.sched.state(u) is UnitState.PENDING:
                    self.sched.move(u, UnitState.ESTIMATED)
                    self.ledger.record(u, UnitState.ESTIMATED, reason=decision.why)
            report.estimated[f"{seed}/{recipe}"] = decision.why
            self.commits.pop((seed, recipe), None)  # never merged in this run
            self.log(f"estimated seed {seed} {recipe}: {decision.why}; stopped by its stop_when rule")

    # --- waiting for capacity ---------------------------------------------------------------

    def _keep_waiting(self, report: RunReport) -> bool:
        """Whether the loop has anything left to wait for. Units the cluster cannot hold now (and
        evals that cannot be planned on a cluster with no GPUs) wait for capacity, each for at
        most wait_for_capacity_s; a running unit that lost its GPUs is cancelled when its wait
        runs out (Ray would hold it forever). Units that waited in vain stay PENDING. Costs what
        waits, not what is pending: PENDING units wait (and are logged) as one per GPU size, the
        units that fit are counted, not walked. Units of one size wait together: one planned after
        their wait ran out gives up with them (the cluster has lacked those GPUs that long)."""
        capacity = self.capacity
        if self.budget_blocked:
            report.budget = self.budget.stopped  # PENDING units wait for no GPUs: the budget holds them
        for key, u in list(self.waiting_units.items()):  # waits that are over: the unit fits, or ended
            state = self.sched.state(u)
            if capacity.fits(self._slots(u)) or state not in (UnitState.PENDING, UnitState.RUNNING):
                self._wait_over(key, report)
                del self.waiting_units[key]
            elif state is UnitState.PENDING:  # its attempt failed back to PENDING: it waits with its size now
                self._carry(u, report)
        for key, size in list(self.waiting_sizes.items()):
            if capacity.fits(size) or not self.sched.pending_of(size):
                self._wait_over(key, report)
                del self.waiting_sizes[key]
        if UNPLANNED in self.waits.since and (capacity.total > 0 or not self.unplanned):
            self._wait_over(UNPLANNED, report)
        for handle, att in list(self.sched.running.items()):
            if capacity.fits(self._slots(att.unit)):
                continue
            self.waiting_units[att.unit.id] = att.unit
            if not self.waits.waiting(att.unit.id, self._slots(att.unit), capacity):
                self.executor.cancel(handle)
                self.sched.ended(handle)
                what = self.waits.what[att.unit.id]
                self.sched.move(att.unit, UnitState.INTERRUPTED)
                self.ledger.record(att.unit, UnitState.INTERRUPTED, attempt=att.id, error=what)
                self.sched.move(att.unit, UnitState.PENDING)
                self.ledger.record(att.unit, UnitState.PENDING, reason="gave up waiting for capacity")
                self._carry(att.unit, report)  # PENDING now: it waits with the units of its size
        still_waiting = False
        for size, n, first in () if self.budget_blocked else self.sched.too_big(capacity):
            key = size_key(size)
            self.waiting_sizes[key] = size
            who = first.id if n == 1 else f"{n:,} units ({first}, ...)"
            if self.waits.waiting(key, size, capacity, who, many=n > 1):
                still_waiting = True
            else:
                report.waiting[key] = self.waits.what[key]
        if self.unplanned:  # trained seeds whose evals wait for GPUs to be sharded over
            n, first = len(self.unplanned), min(self.unplanned)
            who = f"evals of seed {first}" if n == 1 else f"evals of {n:,} seeds ({first}, ...)"
            if self.waits.waiting(UNPLANNED, 1, capacity, who):
                still_waiting = True
            else:
                report.waiting[UNPLANNED] = self.waits.what[UNPLANNED]
        if self.sched.running or (self.sched.launchable(capacity) and not self.budget_blocked) or still_waiting:
            return True
        for what in report.waiting.values():
            self.log(f"gave up after {self.waits.limit_s:.0f} s: {what}; run again once the cluster has them")
        return False

    def _pod_demand(self) -> Demand:
        """What the idle stopper must leave runnable: the PENDING units of each size (a count per
        size, not a walk) and the running units that lost their GPUs; nothing while the budget
        holds new launches (they would not start on a pod kept for them)."""
        if self.budget_blocked:
            return Demand(self.capacity.total)
        sizes = {self._slots(Unit.train(0))} | {e.gpus for e in self.spec.evals}
        avoided = [(self._slots(u), nodes) for u, nodes in self.avoid.items() if nodes and self.sched.state(u) is UnitState.PENDING]
        waiting = [self._slots(u) for u in self.waiting_units.values()]
        return Demand.of(self.capacity.total, {s: self.sched.pending_of(s) for s in sizes}, avoided, waiting)

    def _carry(self, u: Unit, report: RunReport) -> None:
        """A running unit's own wait goes on as its size group's, from when it began."""
        key = size_key(self._slots(u))
        self.waits.carry(u.id, key)
        self.waiting_sizes[key] = self._slots(u)  # cleared with the group (also if the budget holds it)
        report.waiting.pop(u.id, None)
        del self.waiting_units[u.id]

    def _wait_over(self, key: str, report: RunReport) -> None:
        self.waits.satisfied(key)
        report.waiting.pop(key, None)

    # --- failed attempts --------------------------------------------------------------------

    def _attempt_nodes(self, att: Attempt) -> tuple[set[str], set[str]]:
        """(nodes the attempt ran on, of those the ones no longer alive): from its placed events,
        read from the ledger's objects since the attempt began (not the whole history)."""
        nodes = {
            # by attempt id, from a minute before it started: a task's clock may differ from ours
            e["node_id"] for e in self.ledger.events(since=att.started_wall - 60.0)
            if e.get("event") == "placed" and e.get("attempt") == att.id and e.get("node_id")
        }
        alive = {n["NodeID"] for n in self.executor.nodes() if n["Alive"]}
        return nodes, nodes - alive

    def _abandon_lost(self, report: RunReport) -> None:
        """Attempts placed on a node that left the alive set are cancelled and handled as a node
        death now. Ray's own error for them can take minutes (a vanished host's connections hang
        until gRPC keepalives give up) after its health check marked the node dead, while the
        attempt holds its unit and status shows it running (issue 22)."""
        gone, self.gone = self.gone, set()
        if not self.sched.running:
            return
        since = min(a.started_wall for a in self.sched.running.values()) - 60.0  # a task's clock may differ from ours
        placed: dict[str, list[dict]] = {}
        for e in self.ledger.events(since=since):
            if e.get("event") == "placed" and e.get("attempt"):
                placed.setdefault(e["attempt"], []).append(e)
        for handle, att in list(self.sched.running.items()):
            where = placed.get(att.id, [])
            lost = sorted({e.get("node_id") for e in where} & gone)
            if not lost:
                continue
            self.executor.abandon(handle, sorted({e["placement_group"] for e in where if e.get("placement_group")}))
            self.sched.ended(handle)
            how = ("the driver's host stopped reaching it; Ray still listed it" if lost[0] in self.unreachable
                   else "the driver saw it leave the cluster; not waiting for Ray's error")
            err = NodeLost(f"node {lost[0]} died under the attempt ({how})")
            self._on_error(att, err, time.perf_counter() - att.started, report)

    def _committed(self, att: Attempt) -> dict[str, Any]:
        """When a dying attempt last committed work, for the ledger's lost-work cost."""
        from pipeline.progress.view import committed_until

        until = committed_until(self.store, self.layout, att.unit.id, att.id)
        return {} if until is None else {"committed_until": until}

    def _on_error(self, att: Attempt, err: BaseException, secs: float, report: RunReport) -> None:
        u = att.unit
        nodes, dead = self._attempt_nodes(att)
        failure = classify(err, nodes, dead)
        history = self.failures.setdefault(u, [])
        decision = self._policy(u).decide(failure, history)
        history.append(failure)
        committed = self._committed(att)
        if decision.action is Action.RETRY:
            self.sched.move(u, UnitState.INTERRUPTED)
            self.ledger.record(u, UnitState.INTERRUPTED, attempt=att.id, seconds=secs, **committed, **failure.as_dict())
            self.sched.move(u, UnitState.PENDING, not_before=time.monotonic() + decision.delay_s)
            self.ledger.record(u, UnitState.PENDING, reason=decision.reason, delay_s=decision.delay_s)
            self.avoid[u] = decision.avoid_nodes
            self.log(f"interrupted {u}: {decision.reason}; retrying in {decision.delay_s:.0f} s")
            return
        self.sched.move(u, UnitState.FAILED)
        self.ledger.record(u, UnitState.FAILED, attempt=att.id, seconds=secs, reason=decision.reason, **committed, **failure.as_dict())
        report.failed[u] = decision.reason
        self.log(f"FAILED {u}: {decision.reason}")
