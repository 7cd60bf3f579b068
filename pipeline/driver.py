"""The campaign driver: turns a spec into units of work and runs them on Ray.

Ray does the distributed work (placement, worker groups, process death); the driver only decides
*what* to submit *when*: each seed's training as a Ray Train `TorchTrainer` (launched from a
zero-CPU Ray task so trains and evals are waited on alike), then its evals as `num_gpus=1` tasks.
Training goes first; evals fill the GPU slots training does not need, so one seed's evals run
while the next seed trains. Units whose commit object is already in the store are skipped.

Three small policies make the decisions the loop acts on (README "Errors and retries", "Waiting
for GPUs"): `pipeline.errors` classifies a failed attempt and says retry or fail, `CapacityWaits`
says which units wait for GPUs the cluster does not have and when to stop waiting, and
`pick_evals` says which evals to launch on the free GPUs. One lease per campaign keeps a second
driver out.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import import_artifacts
from pipeline.campaign import CampaignChanged, check_campaign
from pipeline.errors import Action, Failure, RetryPolicy, ScriptError, UnitError, classify
from pipeline.lease import Lease
from pipeline.ledger import Ledger
from pipeline.progress.budget import Budget, Projection, Rates, Work
from pipeline.progress.pricing import LABEL_POD_ID, node_identity
from pipeline.progress.stopping import EarlyStops, estimate_key
from pipeline.spec import CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, new_attempt_id, normalize_uri, open_store
from pipeline.units import Unit, UnitState, UnitTracker

__all__ = ["CampaignChanged", "Driver", "RunReport", "UnitError", "check_campaign", "pick_evals", "resolve_paths"]

# Eval tasks keep their worker process across shards; Ray must then not narrow
# CUDA_VISIBLE_DEVICES per task (workers/device.py cuda_index says why).
EVAL_TASK_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
TICK_S = 1.0  # how often the loop looks at the cluster when nothing finishes


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


# --- what runs on the cluster -----------------------------------------------------------------


def _fit_group(
    name: str, loop: Callable, config: dict, workers: int, gpus_per_worker: float, accelerator: str, store: Store, error_key: str,
) -> None:
    """A Ray Train worker group running `loop` (NCCL on cuda, gloo on cpu) until it ends; no
    restarts inside (max_failures=0): a dead or failing rank ends the group at once and the
    driver's retry policy decides what comes next. An application error a rank recorded at
    `error_key` (this attempt's own key) is raised as UnitError (deterministic)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def recorded_error() -> None:
        if store.exists(error_key):
            rec = store.get_json(error_key)
            # a user's script that failed is classified by its log (ScriptError); our own code's error is the unit's
            raise (ScriptError if rec.get("kind") == "script" else UnitError)(rec["error"]) from None

    use_gpu = gpus_per_worker > 0
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": gpus_per_worker} if use_gpu else {"CPU": 1},
        ),
        torch_config=TorchConfig(backend="nccl" if accelerator == "cuda" else "gloo"),
        run_config=RunConfig(
            name=f"{name}-{config['attempt']}",
            storage_path=os.path.join(tempfile.gettempdir(), "pipeline-ray-train"),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        recorded_error()
        raise
    recorded_error()
    if result.error is not None:
        raise result.error


def _place(spec: CampaignSpec, store_uri: str, run_id: str, unit: Unit, attempt: str, **extra: Any) -> None:
    """The `placed` event of an attempt: node, pod (its label, where the node is a pod), GPUs and pid
    of this process, and the software stack it runs on (every attempt, every rank: README "Reports")."""
    import ray

    from workers.provenance import provenance

    ctx = ray.get_runtime_context()
    labels = ctx.get_node_labels() or {}
    Ledger(open_store(store_uri), Layout(spec.name), run_id).placed(
        unit, attempt=attempt, node_id=ctx.get_node_id(), pod=labels.get(LABEL_POD_ID), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
        pid=os.getpid(), provenance=provenance(), **extra,
    )


def _train_group_loop(config: dict) -> None:
    """One rank of a seed's training group (a Ray Train worker)."""
    import ray.train

    from workers.train import ray_train_loop

    from workers.script_train import script_train_loop

    spec = CampaignSpec.model_validate(config["spec"])
    rank = ray.train.get_context().get_world_rank()
    _place(spec, config["store_uri"], config["run_id"], Unit.train(config["seed"]), config["attempt"], rank=rank)
    (script_train_loop if isinstance(spec.train, ScriptTrain) else ray_train_loop)(config)


def _train_unit(spec_json: dict, seed: int, store_uri: str, context: dict, run_id: str, attempt: str) -> dict:
    """Runs in a zero-CPU Ray task: starts the seed's worker group and waits for it. A restarted
    attempt resumes from the newest checkpoint in the store."""
    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    t = spec.train
    config = {"spec": spec_json, "seed": seed, "store_uri": store_uri, "context": context, "run_id": run_id, "attempt": attempt}
    # A script's ranks rendezvous on their own (NCCL in the script); the group around them only
    # exchanges addresses, over gloo, and never touches a GPU.
    backend = "cpu" if isinstance(t, ScriptTrain) else spec.cluster.accelerator
    _fit_group(
        f"{spec.name}-seed{seed}", _train_group_loop, config, t.world_size, t.gpus_per_worker, backend,
        store, layout.train_error(seed, attempt),
    )
    return store.get_json(layout.manifest(seed))["train"]


def _eval_unit(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str, attempt: str) -> dict:
    """Runs in a num_gpus=1 Ray task: one eval shard, resumed from its segments, on the GPU Ray
    assigned to this task (the process may have run other shards on other GPUs before)."""
    import ray

    from workers.device import cuda_index
    from workers.evaluate import run_shard
    from workers.group import Group

    spec = CampaignSpec.model_validate(spec_json)
    index = cuda_index([str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES"))
    group = Group.on(0, 1, index, spec.cluster)
    _place(
        spec, store_uri, run_id, Unit.eval(seed, recipe, shard), attempt, device=str(group.device), cuda_index=index,
        cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    try:
        return run_shard(spec, seed, recipe, store_uri, shard, group=group, attempt=attempt)
    finally:
        import torch

        if torch.cuda.is_available():  # the process is reused: hand the shard's memory back
            torch.cuda.empty_cache()


def _eval_group_loop(config: dict) -> None:
    """One rank of a TTT unit on ttt.gpus GPUs (a Ray Train worker)."""
    from workers.evaluate import run_shard
    from workers.group import APP_ERRORS, Group, record_error

    spec = CampaignSpec.model_validate(config["spec"])
    seed, recipe, shard, store_uri, attempt = (config[k] for k in ("seed", "recipe", "shard", "store_uri", "attempt"))
    group = Group.of_ray_train(spec.cluster)
    _place(spec, store_uri, config["run_id"], Unit.eval(seed, recipe, shard), attempt, rank=group.rank)
    try:
        run_shard(spec, seed, recipe, store_uri, shard, group=group, attempt=attempt)
    except APP_ERRORS as e:
        # Recorded for the launcher, which marks the unit FAILED; raised so the group stops now
        # rather than leaving the other ranks waiting in a collective.
        record_error(open_store(store_uri), Layout(spec.name).shard_error(seed, recipe, shard, attempt), group.rank, e)
        raise


def _eval_group_unit(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str, attempt: str) -> dict:
    """Runs in a zero-CPU Ray task: a TTT unit as a worker group of ttt.gpus ranks. A dead rank
    ends the attempt and the driver resumes the unit from its saved state."""
    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    config = {"spec": spec_json, "seed": seed, "recipe": recipe, "shard": shard, "store_uri": store_uri, "run_id": run_id, "attempt": attempt}
    _fit_group(
        f"{spec.name}-seed{seed}-{recipe}", _eval_group_loop, config, spec.eval_recipe(recipe).gpus, 1,
        spec.cluster.accelerator, store, layout.shard_error(seed, recipe, shard, attempt),
    )
    return store.get_json(layout.shard_done(seed, recipe, shard))


# --- policies ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    spec: CampaignSpec
    done: list[Unit] = field(default_factory=list)  # ran to DONE in this run
    skipped: list[Unit] = field(default_factory=list)  # DONE before this run
    failed: dict[Unit, str] = field(default_factory=dict)
    estimated: dict[str, str] = field(default_factory=dict)  # "seed/recipe" → why its stop rule ended it
    budget: str | None = None  # why units were left PENDING by the budget
    blocked: list[Unit] = field(default_factory=list)  # could not run: their training failed
    waiting: dict[str, str] = field(default_factory=dict)  # unit → what it waited for in vain (left PENDING)
    lease_lost: str | None = None  # another driver took the campaign over mid-run
    durations: dict[str, float] = field(default_factory=dict)  # unit id → seconds, this run
    wall_s: float = 0.0


def pick_evals(pending: list[Unit], slots: Callable[[Unit], float], free: float, capacity: float) -> list[Unit]:
    """Which pending eval units to launch now, given `free` GPUs of `capacity`.

    Largest first: multi-GPU TTT units are the long sequential ones, so they should start early.
    When the largest unit that fits the cluster does not fit the free GPUs, nothing smaller jumps
    ahead of it: GPUs gather for it as they free up instead of going to 1-GPU shards one by one,
    which would starve it. A unit bigger than the whole cluster is never launched (it waits for
    capacity, see CapacityWaits)."""
    out: list[Unit] = []
    for u in sorted(pending, key=lambda u: -slots(u)):
        need = slots(u)
        if need > capacity:
            continue
        if need > free:
            break
        out.append(u)
        free -= need
    return out


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

    def waiting(self, key: str, need: float, capacity: float) -> bool:
        """Record that `key` needs `need` GPUs now; True while it may still wait."""
        t = self.now()
        self.since.setdefault(key, t)
        what = f"{key} waits for {need:g} GPUs; the cluster has {capacity:g}"
        if self.record is not None and self.what.get(key) != what:
            self.record(key, what)
        self.what[key] = what
        if t - self.said.get(key, -1e18) >= 60:
            left = self.limit_s - (t - self.since[key])
            self.log(f"{self.what[key]} (giving up in {left:.0f} s)")
            self.said[key] = t
        return t - self.since[key] < self.limit_s

    def satisfied(self, key: str) -> None:
        if self.record is not None and key in self.what:
            self.record(key, None)
        self.since.pop(key, None)
        self.said.pop(key, None)
        self.what.pop(key, None)


# --- the scheduling loop ----------------------------------------------------------------------


@dataclass
class Attempt:
    unit: Unit
    id: str
    started: float
    gpus: float = 1.0


class Driver:
    def __init__(
        self,
        spec: CampaignSpec,
        log: Callable[[str], None] = print,
        connect: Callable[[], None] | None = None,
        train_fn: Callable[..., dict] = _train_unit,
        eval_fn: Callable[..., dict] = _eval_unit,
        group_eval_fn: Callable[..., dict] = _eval_group_unit,
        take_over: bool = False,
        progress: Any = None,
    ):
        """`connect` starts or joins Ray; it is called only when there is work to run, so a
        finished campaign re-runs (and reports) without a cluster. `train_fn` / `eval_fn` are what
        the Ray tasks run (bench/makespan_bench.py swaps in simulated work of the same shape).
        `progress` (pipeline/progress/live.py) is started with this run's id and shows it live."""
        self.spec = spec
        self.connect = connect
        self.train_fn, self.eval_fn, self.group_eval_fn = train_fn, eval_fn, group_eval_fn
        self.take_over = take_over
        self.store = open_store(spec.store)
        self.layout = Layout(spec.name)
        self.log = log
        self.ledger = Ledger(self.store, self.layout, run_id=new_attempt_id())
        self.tracker = UnitTracker()
        self.lease = campaign_lease(self.store, spec, self.ledger.run_id)
        self.waits = CapacityWaits(spec.cluster.wait_for_capacity_s, log, record=self.ledger.waiting)
        self.failures: dict[Unit, list[Failure]] = {}
        self.not_before: dict[Unit, float] = {}  # retry backoff
        self.avoid: dict[Unit, tuple[str, ...]] = {}  # nodes a retry should stay off
        self.unplanned: list[int] = []  # seeds whose training is done but whose evals are not planned
        self.progress = progress
        self.stops = EarlyStops(spec, self.store, every_s=min(spec.checkpoint_every_s, 30.0))
        self.budget = Budget(spec.budget_usd, log)
        self.rates = Rates()
        self.spent_before_usd = 0.0  # what earlier runs of this campaign cost (ledger)
        self.spent_usd = 0.0  # this run's finished attempts
        self.shard_batches: dict[Unit, int] = {}
        self.eval_units: dict[tuple[int, str], list[Unit]] = {}  # (seed, recipe) → its shards, for the merge
        self.recipe_batches: dict[str, int] = {}  # batches of a recipe's plan (the same for every seed)
        self.nodes: list[dict] | None = None  # the cluster as last recorded in the ledger
        self.usd_per_gpu_s = spec.cluster.pricing.usd_per_gpu_hour / 3600.0
        self.budget_blocked = False

    def _capacity(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0.0))

    def _slots(self, u: Unit) -> float:
        t = self.spec.train
        return t.world_size * t.gpus_per_worker if u.kind == "train" else self.spec.eval_recipe(u.recipe).gpus

    def _policy(self, u: Unit) -> RetryPolicy:
        c = self.spec.cluster
        return RetryPolicy(self.spec.train.max_failures if u.kind == "train" else c.max_interruptions, c.retry_backoff_s)

    def _plan_evals(self, seed: int, report: RunReport, capacity: float) -> None:
        """Plan the seed's evals (plan.json, written once) and track one unit per shard. The shard
        count follows the cluster's GPUs now, not when the driver started."""
        from workers.plan import ensure_plan  # data-plane imports only when there is work

        for recipe in self.spec.evals:
            if self.store.exists(self.layout.result(seed, recipe.name)):
                continue
            plan = ensure_plan(self.store, self.spec, seed, recipe, max(1, int(capacity)))
            est = estimate_key(self.layout, seed, recipe)
            estimated = est is not None and self.store.exists(est)
            for k in range(len(plan["shards"])):
                u = Unit.eval(seed, recipe.name, k)
                self.eval_units.setdefault((seed, recipe.name), []).append(u)
                self.shard_batches[u] = len(plan["shards"][k])
                self.recipe_batches[recipe.name] = plan["batches"]
                done = self.store.exists(u.commit_key(self.layout))
                self.tracker.add(u, UnitState.DONE if done else UnitState.ESTIMATED if estimated else UnitState.PENDING)
                if done or estimated:
                    report.skipped.append(u)
            if estimated:
                report.estimated[f"{seed}/{recipe.name}"] = self.store.get_json(est)["why"]
            self._merge_if_complete(seed, recipe.name)

    def _plan_ready(self, report: RunReport, capacity: float) -> None:
        """Evals are planned once their seed is trained and the cluster has GPUs to shard them over."""
        if self.unplanned and capacity > 0:
            for seed in self.unplanned:
                self._plan_evals(seed, report, capacity)
            self.unplanned.clear()

    def _merge_if_complete(self, seed: int, recipe: str) -> None:
        shards = self.eval_units.get((seed, recipe), [])
        if shards and all(self.tracker.state(u) == UnitState.DONE for u in shards):
            from workers.result import merge_result  # numpy only: the driver never imports torch for this

            r = merge_result(self.store, self.layout, seed, self.spec.eval_recipe(recipe))
            note = f"; {len(r['conflicts'])} batch(es) scored differently by two attempts" if r.get("conflicts") else ""
            self.log(f"result seed {seed} {recipe}: val_bpb {r['val_bpb']:.6f} ({r['shards']} shard(s)){note}")

    def _eval_finished(self, seed: int, recipe) -> bool:
        """Merged, or ended early by its current stop rule."""
        if self.store.exists(self.layout.result(seed, recipe.name)):
            return True
        est = estimate_key(self.layout, seed, recipe)
        return est is not None and self.store.exists(est)

    def _measure_history(self) -> None:
        """What earlier runs spent and how fast their units went: the budget's starting point."""
        from pipeline.progress.cost import cost_report

        events = self.ledger.events()
        report = cost_report(events, time.time())
        self.spent_before_usd = report.total_usd
        for a in report.attempts:
            if a.outcome == "DONE":
                self.rates.observe(a.unit.split("/")[0], a.recipe or "", a.seconds(time.time()) * a.gpus, a.batches)

    def _record_cluster(self) -> None:
        """A `cluster` event when the nodes (or their liveness) changed; the price of a GPU-second
        follows the alive nodes."""
        import ray

        nodes = [node_identity(n, self.spec.cluster.pricing).as_dict() for n in ray.nodes()]
        nodes.sort(key=lambda n: n["node_id"])
        if nodes != self.nodes:
            self.nodes = nodes
            self.ledger.cluster(nodes)
            alive = [n for n in nodes if n["alive"] and n["gpus"] > 0]
            gpus = sum(n["gpus"] for n in alive)
            if gpus:
                self.usd_per_gpu_s = sum(n["gpus"] * n["usd_per_gpu_hour"] for n in alive) / gpus / 3600.0

    def _projection(self, running: dict[Any, Attempt]) -> Projection:
        now = time.perf_counter()
        t = self.spec.train
        work = [
            Work(u.kind, u.recipe, self._slots(u), self.shard_batches.get(u))
            for u in self.tracker.in_state(UnitState.PENDING)
        ] + [
            Work(a.unit.kind, a.unit.recipe, a.gpus, self.shard_batches.get(a.unit), now - a.started) for a in running.values()
        ] + [  # evals of seeds still training: not planned yet
            Work("eval", e.name, 1, self.recipe_batches.get(e.name))
            for s in self.spec.seeds if self.tracker.states.get(Unit.train(s)) != UnitState.DONE
            for e in self.spec.evals
        ]
        running_usd = sum((now - a.started) * a.gpus for a in running.values()) * self.usd_per_gpu_s
        spent = self.spent_before_usd + self.spent_usd + running_usd
        return Budget.project(spent, work, self.rates, self.usd_per_gpu_s, t.max_wallclock_s * self._slots(Unit.train(0)))

    def run(self) -> RunReport:
        t_start = time.perf_counter()
        report = RunReport(self.spec)
        spec, layout = self.spec, self.layout
        self.store.clean_tmp(layout.root)  # what interrupted writes of an earlier run left
        evals_left = {s: [e for e in spec.evals if not self._eval_finished(s, e)] for s in spec.seeds}
        trains_left = [s for s in spec.seeds if not self.store.exists(Unit.train(s).commit_key(layout))]
        if not trains_left and not any(evals_left.values()):
            check_campaign(spec, self.store)
            report.skipped = [Unit.train(s) for s in spec.seeds] + [Unit.eval(s, e.name) for s in spec.seeds for e in spec.evals]
            for s in spec.seeds:
                for e in spec.evals:
                    est = estimate_key(layout, s, e)
                    if not self.store.exists(layout.result(s, e.name)) and est and self.store.exists(est):
                        report.estimated[f"{s}/{e.name}"] = self.store.get_json(est)["why"]
            self.log(f"every unit is already DONE{' or ESTIMATED' if report.estimated else ''} in {self.store.uri}")
            return report
        check_campaign(spec, self.store)
        replaced = self.lease.acquire(self.take_over)
        if replaced is not None and not replaced.released:
            self.log(f"took the campaign over from {replaced.describe(time.time())}")
        self.lease.start_heartbeat()
        import_artifacts(spec, self.store, self.log)  # eval-only seeds: their artifact is their training's commit
        self.store.put_new_json(layout.run(self.ledger.run_id), {
            "version": 1, "run": self.ledger.run_id, "start": time.time(), "spec": spec.model_dump(mode="json"),
        })
        self._measure_history()
        if self.progress is not None:
            self.progress.start(self.ledger.run_id)
        try:
            self._run(report, evals_left)
        finally:
            if self.progress is not None:
                self.progress.stop()
            self.lease.release()
        report.wall_s = time.perf_counter() - t_start
        return report

    def _run(self, report: RunReport, evals_left: dict[int, list]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec, layout = self.spec, self.layout
        for seed in spec.seeds:
            u = Unit.train(seed)
            done = self.store.exists(u.commit_key(layout))
            self.tracker.add(u, UnitState.DONE if done else UnitState.PENDING)
            if done:
                report.skipped.append(u)
                self.unplanned.append(seed)
            report.skipped += [Unit.eval(seed, e.name) for e in spec.evals if e not in evals_left[seed]]
        if self.connect is not None:
            self.connect()
        capacity = self._capacity()
        from pipeline.pods.campaign import CampaignPods  # active only with a RunPod key and pod nodes

        pods = CampaignPods.for_cluster(spec.cluster.idle_stop_min, self.log)

        spec_json = spec.model_dump(mode="json")
        # the driver's command line: what a maintainer reruns (the manifest's provenance)
        context = {"git_commit": git_commit(), "spec_fingerprint": spec.fingerprint(), "command": shlex.join(sys.argv)}
        # The launcher of a worker group stays on the driver's node, so losing a GPU node costs the
        # group its workers but never the launcher itself.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        train_remote = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(self.train_fn)
        # max_calls=0: reuse eval worker processes across shards (Ray's default for GPU tasks is a
        # fresh process each time, which re-imports torch and re-creates the CUDA context per
        # shard); EVAL_TASK_ENV keeps each task on the GPU Ray assigned to it.
        eval_remote = ray.remote(max_retries=0, max_calls=0, runtime_env={"env_vars": EVAL_TASK_ENV})(self.eval_fn)
        group_remote = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(self.group_eval_fn)
        running: dict[Any, Attempt] = {}

        def elsewhere(u: Unit):
            """A soft affinity to an alive GPU node the unit has not failed on, if there is one."""
            avoid = set(self.avoid.get(u, ()))
            if not avoid:
                return None
            for n in ray.nodes():
                if n["Alive"] and n["NodeID"] not in avoid and n["Resources"].get("GPU", 0) >= self._slots(u):
                    return NodeAffinitySchedulingStrategy(n["NodeID"], soft=True)
            return None

        def launch(u: Unit) -> None:
            attempt = new_attempt_id()
            if u.kind == "train":
                ref = train_remote.remote(spec_json, u.seed, spec.store, context, self.ledger.run_id, attempt)
            else:
                args = (spec_json, u.seed, u.recipe, spec.store, u.shard, self.ledger.run_id, attempt)
                if self._slots(u) > 1:
                    ref = group_remote.remote(*args)
                else:
                    strategy = elsewhere(u)
                    opts = {"num_gpus": 1, **({"scheduling_strategy": strategy} if strategy else {})}
                    ref = eval_remote.options(**opts).remote(*args)
            self.tracker.move(u, UnitState.RUNNING)
            self.ledger.record(u, UnitState.RUNNING, attempt=attempt, n=len(self.failures.get(u, [])) + 1, gpus=self._slots(u))
            running[ref] = Attempt(u, attempt, time.perf_counter(), self._slots(u))
            self.log(f"start  {u}")

        self._plan_ready(report, capacity)
        if report.skipped:
            self.log(f"skipping {len(report.skipped)} unit(s) already DONE in {self.store.uri}")
        to_merge: list[tuple[int, str]] = []  # (seed, recipe) whose shard just finished
        self._record_cluster()
        while not self.lease.lost.is_set():
            now = time.monotonic()
            self._plan_ready(report, capacity)
            if self.stops.due():
                self._early_stops(running, report)
            if pods is not None:
                pods.tick()  # stop pods no unit has used for idle_stop_min
            pending = [u for u in self.tracker.in_state(UnitState.PENDING) if self.not_before.get(u, 0) <= now]
            # the projection walks every unit: only when there is a budget to hold it against
            self.budget_blocked = bool(pending) and spec.budget_usd is not None and not self.budget.allows(self._projection(running))
            if self.budget_blocked:
                pending = []
            busy = {"train": 0.0, "eval": 0.0}
            for att in running.values():
                busy[att.unit.kind] += self._slots(att.unit)
            # Trains first, in seed order, as many groups as fit.
            for u in (u for u in pending if u.kind == "train" and self._slots(u) <= capacity):
                if busy["train"] == 0 or busy["train"] + self._slots(u) <= capacity:
                    launch(u)
                    busy["train"] += self._slots(u)
            # Eval units fill whatever training leaves free.
            free = max(capacity - busy["train"] - busy["eval"], 0)
            for u in pick_evals([u for u in pending if u.kind == "eval"], self._slots, free, capacity):
                launch(u)
            # Bookkeeping only once the GPUs have their next work, so they never wait on it.
            for seed, recipe in to_merge:
                self._merge_if_complete(seed, recipe)
            to_merge.clear()
            if not self._keep_waiting(running, capacity, report):
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=TICK_S) if running else ([], [])
            if not running:
                time.sleep(TICK_S)
            capacity = self._capacity()  # nodes come and go (a pod dies, a replacement joins)
            self._record_cluster()
            if not ready:
                continue
            att = running.pop(ready[0])
            u, secs = att.unit, time.perf_counter() - att.started
            try:
                out = ray.get(ready[0])
            except Exception as err:  # noqa: BLE001 - classified below, never swallowed
                self._on_error(att, err, secs, report)
                continue
            # the batches this attempt scored (a resumed shard's earlier ones were paid for before)
            batches = out.get("batches", 0) - out.get("run", {}).get("resumed_batches", 0) if u.kind == "eval" else None
            self.tracker.move(u, UnitState.DONE)
            self.ledger.record(u, UnitState.DONE, attempt=att.id, seconds=secs, batches=batches)
            self.spent_usd += secs * att.gpus * self.usd_per_gpu_s
            self.rates.observe(u.kind, u.recipe, secs * att.gpus, batches)
            report.done.append(u)
            report.durations[u.id] = secs
            if u.kind == "train":
                self.log(f"done   {u}  {secs:6.1f}s  {out.get('steps', '?')} steps")
                self.unplanned.append(u.seed)
            else:
                self.log(f"done   {u}  {secs:6.1f}s  {out['batches']} batches")
                to_merge.append((u.seed, u.recipe))
        for line in pods.still_billing() if pods is not None else []:
            self.log(line)
        if self.lease.lost.is_set():
            holder = self.lease.holder()
            report.lease_lost = holder.describe(time.time()) if holder else "another driver"
            self.log(f"the campaign was taken over by {report.lease_lost}; stopping (running attempts are fenced)")
        left = [] if report.budget else self.tracker.in_state(UnitState.PENDING)  # the budget says why those wait
        report.blocked = [u for u in left if u.id not in report.waiting] + [
            Unit.eval(s, e.name) for s in spec.seeds for e in evals_left[s]
            if self.tracker.state(Unit.train(s)) != UnitState.DONE and s not in self.unplanned
        ]

    def _early_stops(self, running: dict[Any, Attempt], report: RunReport) -> None:
        """Evals whose stop rule holds now end ESTIMATED: their running shards are cancelled (what
        they flushed stays in the store for a later full run), their pending ones not started."""
        import ray

        live = {UnitState.PENDING, UnitState.RUNNING}
        evals = {(u.seed, u.recipe) for u, st in self.tracker.states.items() if u.kind == "eval" and st in live}
        evals = {(s, r) for s, r in evals if self.spec.eval_recipe(r).stop_when is not None}
        if not evals:
            return
        for seed, recipe, decision in self.stops.check(evals):
            for ref, att in list(running.items()):
                if att.unit.kind == "eval" and (att.unit.seed, att.unit.recipe) == (seed, recipe):
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    secs = time.perf_counter() - att.started
                    self.spent_usd += secs * att.gpus * self.usd_per_gpu_s
                    self.tracker.move(att.unit, UnitState.ESTIMATED)
                    self.ledger.record(att.unit, UnitState.ESTIMATED, attempt=att.id, seconds=secs, **self._committed(att), reason=decision.why)
            for u in self.tracker.in_state(UnitState.PENDING):
                if u.kind == "eval" and (u.seed, u.recipe) == (seed, recipe):
                    self.tracker.move(u, UnitState.ESTIMATED)
                    self.ledger.record(u, UnitState.ESTIMATED, reason=decision.why)
            report.estimated[f"{seed}/{recipe}"] = decision.why
            self.log(f"estimated seed {seed} {recipe}: {decision.why}; stopped by its stop_when rule")

    def _keep_waiting(self, running: dict[Any, Attempt], capacity: float, report: RunReport) -> bool:
        """Whether the loop has anything left to wait for. Units the cluster cannot hold now (and
        evals that cannot be planned on a cluster with no GPUs) wait for capacity, each for at
        most wait_for_capacity_s; a running unit that lost its GPUs is cancelled when its wait
        runs out (Ray would hold it forever). Units that waited in vain stay PENDING."""
        import ray

        launchable = still_waiting = False
        for u in self.tracker.in_state(UnitState.PENDING):
            if self.budget_blocked:
                report.budget = self.budget.stopped
            elif self._slots(u) <= capacity:
                launchable = True  # now, or after its retry backoff
                self.waits.satisfied(u.id)
                report.waiting.pop(u.id, None)
            elif self.waits.waiting(u.id, self._slots(u), capacity):
                still_waiting = True
            else:
                report.waiting[u.id] = self.waits.what[u.id]
        for seed in self.unplanned:
            key = f"evals of seed {seed}"
            if self.waits.waiting(key, 1, capacity):
                still_waiting = True
            else:
                report.waiting[key] = self.waits.what[key]
        for ref, att in list(running.items()):
            if self._slots(att.unit) <= capacity:
                self.waits.satisfied(att.unit.id)
            elif not self.waits.waiting(att.unit.id, self._slots(att.unit), capacity):
                ray.cancel(ref, force=True, recursive=True)
                running.pop(ref)
                what = report.waiting[att.unit.id] = self.waits.what[att.unit.id]
                self.tracker.move(att.unit, UnitState.INTERRUPTED)
                self.ledger.record(att.unit, UnitState.INTERRUPTED, attempt=att.id, error=what)
                self.tracker.move(att.unit, UnitState.PENDING)
                self.ledger.record(att.unit, UnitState.PENDING, reason="gave up waiting for capacity")
        if running or launchable or still_waiting:
            return True
        for what in report.waiting.values():
            self.log(f"gave up after {self.waits.limit_s:.0f} s: {what}; run again once the cluster has them")
        return False

    def _attempt_nodes(self, att: Attempt) -> tuple[set[str], set[str]]:
        """(nodes the attempt ran on, of those the ones no longer alive): from its placed events."""
        import ray

        nodes = {
            e["node_id"] for e in self.ledger.events()
            if e.get("event") == "placed" and e.get("attempt") == att.id and e.get("node_id")
        }
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        return nodes, nodes - alive

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
        self.spent_usd += secs * att.gpus * self.usd_per_gpu_s
        committed = self._committed(att)
        if decision.action is Action.RETRY:
            self.tracker.move(u, UnitState.INTERRUPTED)
            self.ledger.record(u, UnitState.INTERRUPTED, attempt=att.id, seconds=secs, **committed, **failure.as_dict())
            self.tracker.move(u, UnitState.PENDING)
            self.ledger.record(u, UnitState.PENDING, reason=decision.reason, delay_s=decision.delay_s)
            self.not_before[u] = time.monotonic() + decision.delay_s
            self.avoid[u] = decision.avoid_nodes
            self.log(f"interrupted {u}: {decision.reason}; retrying in {decision.delay_s:.0f} s")
            return
        self.tracker.move(u, UnitState.FAILED)
        self.ledger.record(u, UnitState.FAILED, attempt=att.id, seconds=secs, reason=decision.reason, **committed, **failure.as_dict())
        report.failed[u] = decision.reason
        self.log(f"FAILED {u}: {decision.reason}")
