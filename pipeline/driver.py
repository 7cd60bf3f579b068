"""The campaign driver: turns a spec into units of work and runs them on Ray.

Ray does the distributed work (placement, worker groups, process death); the driver only decides
*what* to submit *when*: each seed's training as a Ray Train `TorchTrainer` (launched from a
zero-CPU Ray task so trains and evals are waited on alike), then its evals as `num_gpus=1` tasks.
Training goes first; evals fill the GPU slots training does not need, so one seed's evals run
while the next seed trains. Units whose commit object is already in the store are skipped.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.ledger import Ledger
from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store, open_store
from pipeline.units import Unit, UnitState, UnitTracker

CAMPAIGN_VERSION = 1


class CampaignChanged(RuntimeError):
    """The store holds this campaign under another spec; resuming would mix results."""


class UnitError(RuntimeError):
    """An application error of a unit (bad input, a bug, a refused artifact): FAILED, not retried."""


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "<root>"]


def check_campaign(spec: CampaignSpec, store: Store) -> bool:
    """Write campaign.json on first run; on later runs refuse a spec whose results would differ.
    Returns True when the campaign already existed."""
    layout = Layout(spec.name)
    if store.exists(layout.campaign_json):
        old = store.get_json(layout.campaign_json)
        if old.get("fingerprint") != spec.fingerprint():
            changed = _diff_paths(old.get("spec", {}), spec.fingerprint_dict())
            raise CampaignChanged(
                f"campaign {spec.name!r} in {store.uri} was started with another spec "
                f"(changed: {', '.join(changed) or 'format'}); use a new name or a new store"
            )
        return True
    store.put_json(
        layout.campaign_json,
        {"version": CAMPAIGN_VERSION, "fingerprint": spec.fingerprint(), "spec": spec.fingerprint_dict()},
    )
    return False


def resolve_paths(spec: CampaignSpec, base: Path | None = None) -> CampaignSpec:
    """Make local paths absolute, so Ray workers (other cwd) see the same files."""
    base = base or Path.cwd()

    def absolute(p: str) -> str:
        return str((base / p).resolve()) if "://" not in p else p

    data = spec.data.model_copy(update={"shards": absolute(spec.data.shards), "tokenizer": absolute(spec.data.tokenizer)})
    return spec.model_copy(update={"data": data, "store": absolute(spec.store)})


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --- what runs on the cluster -----------------------------------------------------------------


def _fit_group(
    name: str, loop: Callable, config: dict, workers: int, gpus_per_worker: float, accelerator: str, max_failures: int,
    store: Store, error_key: str,
) -> None:
    """A Ray Train worker group running `loop` (NCCL on cuda, gloo on cpu) until it ends. An
    application error a rank recorded at `error_key` is raised as UnitError (FAILED, not retried);
    the group giving up otherwise (TrainingFailedError) is a system failure the driver resumes."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def recorded_error() -> None:
        if store.exists(error_key):
            raise UnitError(store.get_json(error_key)["error"]) from None

    store.delete(error_key)  # a new attempt; the old error stays in the ledger
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
            name=f"{name}-{uuid.uuid4().hex[:6]}",
            storage_path=os.path.join(tempfile.gettempdir(), "pipeline-ray-train"),
            failure_config=FailureConfig(max_failures=max_failures),
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


def _train_unit(spec_json: dict, seed: int, store_uri: str, context: dict) -> dict:
    """Runs in a zero-CPU Ray task: starts the seed's worker group and waits for it. Ray Train
    restarts the group from its last checkpoint when a worker dies (train.max_failures)."""
    from workers.train import ray_train_loop

    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    t = spec.train
    config = {"spec": spec_json, "seed": seed, "store_uri": store_uri, "context": context}
    _fit_group(
        f"{spec.name}-seed{seed}", ray_train_loop, config, t.world_size, t.gpus_per_worker, spec.cluster.accelerator,
        t.max_failures, store, layout.train_error(seed),
    )
    return store.get_json(layout.manifest(seed))["train"]


def _place(spec: CampaignSpec, store_uri: str, run_id: str, unit: Unit, **extra: Any) -> None:
    """The `placed` event of an attempt: node, GPUs and pid of this process."""
    import ray

    ctx = ray.get_runtime_context()
    Ledger(open_store(store_uri), Layout(spec.name), run_id).placed(
        unit, node_id=ctx.get_node_id(), gpu_ids=[str(g) for g in ray.get_gpu_ids()], pid=os.getpid(), **extra
    )


def _eval_unit(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str) -> dict:
    """Runs in a num_gpus=1 Ray task: one eval shard, resumed from its segments."""
    from workers.evaluate import run_shard

    spec = CampaignSpec.model_validate(spec_json)
    _place(spec, store_uri, run_id, Unit.eval(seed, recipe, shard))
    try:
        return run_shard(spec, seed, recipe, store_uri, shard)
    finally:
        import torch

        if torch.cuda.is_available():  # the process is reused: hand the shard's memory back
            torch.cuda.empty_cache()


def _eval_group_loop(config: dict) -> None:
    """One rank of a TTT unit on ttt.gpus GPUs (a Ray Train worker)."""
    from workers.evaluate import run_shard
    from workers.group import APP_ERRORS, Group, record_error

    spec = CampaignSpec.model_validate(config["spec"])
    seed, recipe, shard, store_uri = config["seed"], config["recipe"], config["shard"], config["store_uri"]
    group = Group.of_ray_train(spec.cluster)
    _place(spec, store_uri, config["run_id"], Unit.eval(seed, recipe, shard), rank=group.rank)
    try:
        run_shard(spec, seed, recipe, store_uri, shard, group=group)
    except APP_ERRORS as e:
        # Recorded for the launcher, which marks the unit FAILED; raised so the group stops now
        # rather than leaving the other ranks waiting in a collective.
        record_error(open_store(store_uri), Layout(spec.name).shard_error(seed, recipe, shard), group.rank, e)
        raise


def _eval_group_unit(spec_json: dict, seed: int, recipe: str, store_uri: str, shard: int, run_id: str) -> dict:
    """Runs in a zero-CPU Ray task: a TTT unit as a worker group of ttt.gpus ranks. No restarts
    inside: a dead rank ends the attempt and the driver resumes the unit from its saved state."""
    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    config = {"spec": spec_json, "seed": seed, "recipe": recipe, "shard": shard, "store_uri": store_uri, "run_id": run_id}
    _fit_group(
        f"{spec.name}-seed{seed}-{recipe}", _eval_group_loop, config, spec.eval_recipe(recipe).gpus, 1,
        spec.cluster.accelerator, 0, store, layout.shard_error(seed, recipe, shard),
    )
    return store.get_json(layout.shard_done(seed, recipe, shard))


# --- the scheduling loop ----------------------------------------------------------------------


@dataclass
class RunReport:
    spec: CampaignSpec
    done: list[Unit] = field(default_factory=list)  # ran to DONE in this run
    skipped: list[Unit] = field(default_factory=list)  # DONE before this run
    failed: dict[Unit, str] = field(default_factory=dict)
    blocked: list[Unit] = field(default_factory=list)  # could not run: their training failed
    durations: dict[str, float] = field(default_factory=dict)  # unit id → seconds, this run
    wall_s: float = 0.0


def _is_system_failure(err: BaseException) -> bool:
    """Node or process death (resume from the store) vs an error of the unit itself (FAILED).

    A task that raised is an application error, except when what it raised is Ray Train giving
    up on a worker group whose workers kept dying; Ray's own errors (worker crashed, node died,
    actor died, object lost) are system failures."""
    import ray.exceptions as rex
    from ray.train import TrainingFailedError

    if isinstance(err, rex.RayTaskError):
        cause = getattr(err, "cause", None)
        return isinstance(cause, TrainingFailedError)
    return isinstance(err, rex.RayError)


def pick_evals(pending: list[Unit], slots: Callable[[Unit], float], free: float, capacity: float, idle: bool) -> list[Unit]:
    """Which pending eval units to launch now, given `free` GPUs of `capacity`.

    Largest first: multi-GPU TTT units are the long sequential ones, so they should start early.
    When the largest unit that fits the cluster does not fit the free GPUs, nothing smaller jumps
    ahead of it: GPUs gather for it as they free up instead of going to 1-GPU shards one by one,
    which would starve it. A unit bigger than the whole cluster is submitted only when nothing
    runs (Ray holds it until GPUs join, e.g. a cluster still scaling up)."""
    out: list[Unit] = []
    for u in sorted(pending, key=lambda u: -slots(u)):
        need = slots(u)
        if need > capacity:
            if idle and not out:
                out.append(u)
            continue
        if need > free:
            break
        out.append(u)
        free -= need
    return out


class Driver:
    def __init__(
        self,
        spec: CampaignSpec,
        log: Callable[[str], None] = print,
        connect: Callable[[], None] | None = None,
        train_fn: Callable[..., dict] = _train_unit,
        eval_fn: Callable[..., dict] = _eval_unit,
        group_eval_fn: Callable[..., dict] = _eval_group_unit,
    ):
        """`connect` starts or joins Ray; it is called only when there is work to run, so a
        finished campaign re-runs (and reports) without a cluster. `train_fn` / `eval_fn` are what
        the Ray tasks run (bench/makespan_bench.py swaps in simulated work of the same shape)."""
        self.spec = spec
        self.connect = connect
        self.train_fn, self.eval_fn, self.group_eval_fn = train_fn, eval_fn, group_eval_fn
        self.store = open_store(spec.store)
        self.layout = Layout(spec.name)
        self.log = log
        self.ledger = Ledger(self.store, self.layout, run_id=uuid.uuid4().hex[:12])
        self.tracker = UnitTracker()

    def _capacity(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0.0))

    def _add_evals(self, seed: int, report: RunReport, default_shards: int) -> None:
        """Plan the seed's evals (plan.json, written once) and track one unit per shard."""
        from workers.plan import ensure_plan  # data-plane imports (torch) only when there is work

        for recipe in self.spec.evals:
            if self.store.exists(self.layout.result(seed, recipe.name)):
                continue
            plan = ensure_plan(self.store, self.spec, seed, recipe, default_shards)
            for k in range(len(plan["shards"])):
                u = Unit.eval(seed, recipe.name, k)
                done = self.store.exists(u.commit_key(self.layout))
                self.tracker.add(u, UnitState.DONE if done else UnitState.PENDING)
                if done:
                    report.skipped.append(u)
            self._merge_if_complete(seed, recipe.name)

    def _merge_if_complete(self, seed: int, recipe: str) -> None:
        shards = [u for u in self.tracker.states if u.kind == "eval" and u.seed == seed and u.recipe == recipe]
        if shards and all(self.tracker.state(u) == UnitState.DONE for u in shards):
            from workers.result import merge_result  # numpy only: the driver never imports torch for this

            r = merge_result(self.store, self.layout, seed, self.spec.eval_recipe(recipe))
            self.log(f"result seed {seed} {recipe}: val_bpb {r['val_bpb']:.6f} ({r['shards']} shard(s))")

    def run(self) -> RunReport:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        t_start = time.perf_counter()
        report = RunReport(self.spec)
        check_campaign(self.spec, self.store)
        layout, spec = self.layout, self.spec
        evals_left = {s: [e for e in spec.evals if not self.store.exists(layout.result(s, e.name))] for s in spec.seeds}
        for seed in spec.seeds:
            u = Unit.train(seed)
            done = self.store.exists(u.commit_key(layout))
            self.tracker.add(u, UnitState.DONE if done else UnitState.PENDING)
            if done:
                report.skipped.append(u)
            report.skipped += [Unit.eval(seed, e.name) for e in spec.evals if e not in evals_left[seed]]
        if not self.tracker.in_state(UnitState.PENDING) and not any(evals_left.values()):
            self.log(f"every unit is already DONE in {self.store.uri}")
            return report
        if self.connect is not None:
            self.connect()
        capacity = self._capacity()
        default_shards = max(1, int(capacity))
        for seed in spec.seeds:
            if self.tracker.state(Unit.train(seed)) == UnitState.DONE:
                self._add_evals(seed, report, default_shards)
        if report.skipped:
            self.log(f"skipping {len(report.skipped)} unit(s) already DONE in {self.store.uri}")

        spec_json = spec.model_dump(mode="json")
        context = {"git_commit": git_commit(), "spec_fingerprint": spec.fingerprint()}
        # The launcher of a worker group stays on the driver's node, so losing a GPU node costs the
        # group its workers (Ray Train restarts them) but never the launcher itself.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        train_remote = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(self.train_fn)
        # max_calls=0: reuse eval worker processes across shards (Ray's default for GPU tasks is a
        # fresh process each time, which re-imports torch and re-creates the CUDA context per shard).
        eval_remote = ray.remote(max_retries=0, max_calls=0)(self.eval_fn)
        group_remote = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(self.group_eval_fn)
        t = spec.train
        train_slots = t.world_size * t.gpus_per_worker
        if train_slots > capacity and self.tracker.in_state(UnitState.PENDING):
            self.log(f"warning: a training group needs {train_slots:g} GPU slots, the cluster has {capacity:g} now")
        for e in spec.evals:
            if e.gpus > capacity and any(evals_left.values()):
                self.log(f"warning: eval {e.name} needs {e.gpus} GPUs at once (ttt.gpus), the cluster has {capacity:g} now")

        def slots(u: Unit) -> float:
            return train_slots if u.kind == "train" else spec.eval_recipe(u.recipe).gpus

        running: dict[Any, tuple[Unit, float]] = {}
        interruptions: dict[Unit, int] = {}
        to_merge: list[tuple[int, str]] = []  # (seed, recipe) whose shard just finished
        train_busy = 0.0

        def launch(u: Unit) -> None:
            nonlocal train_busy
            args = (spec_json, u.seed, u.recipe, spec.store, u.shard, self.ledger.run_id)
            if u.kind == "train":
                ref = train_remote.remote(spec_json, u.seed, spec.store, context)
                train_busy += train_slots
            elif slots(u) > 1:
                ref = group_remote.remote(*args)
            else:
                ref = eval_remote.options(num_gpus=1).remote(*args)
            self.tracker.move(u, UnitState.RUNNING)
            self.ledger.record(u, UnitState.RUNNING, attempt=interruptions.get(u, 0) + 1)
            running[ref] = (u, time.perf_counter())
            self.log(f"start  {u}")

        while True:
            pending = self.tracker.in_state(UnitState.PENDING)
            # Trains first, in seed order, as many groups as fit (Ray queues one that does not
            # until its GPUs are free).
            for u in (u for u in pending if u.kind == "train"):
                if train_busy == 0 or train_busy + train_slots <= capacity:
                    launch(u)
            # Eval units fill whatever training leaves free.
            eval_busy = sum(slots(u) for u, _ in running.values() if u.kind == "eval")
            free = max(capacity - train_busy - eval_busy, 0)
            for u in pick_evals([u for u in pending if u.kind == "eval"], slots, free, capacity, idle=not running):
                launch(u)
            # Bookkeeping only once the GPUs have their next work, so they never wait on it.
            for seed, recipe in to_merge:
                self._merge_if_complete(seed, recipe)
            to_merge.clear()
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            capacity = self._capacity()  # nodes come and go (a pod dies, a replacement joins)
            ref = ready[0]
            u, t0 = running.pop(ref)
            if u.kind == "train":
                train_busy -= train_slots
            secs = time.perf_counter() - t0
            try:
                out = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - classified below, never swallowed
                self._on_error(u, err, secs, interruptions, report)
                continue
            self.tracker.move(u, UnitState.DONE)
            self.ledger.record(u, UnitState.DONE, seconds=secs)
            report.done.append(u)
            report.durations[u.id] = secs
            if u.kind == "train":
                self.log(f"done   {u}  {secs:6.1f}s  {out.get('steps', '?')} steps")
                self._add_evals(u.seed, report, default_shards)
            else:
                self.log(f"done   {u}  {secs:6.1f}s  {out['batches']} batches")
                to_merge.append((u.seed, u.recipe))
        report.blocked = self.tracker.in_state(UnitState.PENDING) + [
            Unit.eval(s, e.name) for s in spec.seeds for e in evals_left[s]
            if self.tracker.state(Unit.train(s)) != UnitState.DONE
        ]
        report.wall_s = time.perf_counter() - t_start
        return report

    def _on_error(self, u: Unit, err: BaseException, secs: float, interruptions: dict[Unit, int], report: RunReport) -> None:
        cause = getattr(err, "cause", None) or err
        text = str(cause).strip()
        msg = f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"
        if _is_system_failure(err):
            interruptions[u] = interruptions.get(u, 0) + 1
            if interruptions[u] <= self.spec.cluster.max_interruptions:
                self.tracker.move(u, UnitState.INTERRUPTED)
                self.ledger.record(u, UnitState.INTERRUPTED, seconds=secs, error=msg)
                self.tracker.move(u, UnitState.PENDING)
                self.ledger.record(u, UnitState.PENDING, reason="resume after interruption")
                self.log(f"interrupted {u} ({msg}); resuming")
                return
            msg = f"interrupted {interruptions[u]} times, last: {msg}"
        self.tracker.move(u, UnitState.FAILED)
        self.ledger.record(u, UnitState.FAILED, seconds=secs, error=msg)
        report.failed[u] = msg
        self.log(f"FAILED {u}: {msg}")
