"""A campaign's state read from its store alone: what `pipeline status` shows (docs/progress-cost.md "Progress").

Nothing here needs Ray or the cluster: a copy of the store on a laptop gives the same answer. Per
seed and recipe: state, batches done, running bpb with its interval (a random sample for shardable
evals, a prefix for TTT), windows/s over the last minutes, ETA, $ spent and $ to finish; units
waiting and why; failed units with their error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.records.ledger import Ledger, latest_states
from pipeline.progress.cost import CostReport, cost_report
from pipeline.progress.estimators import Batches, Estimate, bpb_estimate
from pipeline.records.nodes import NodeIdentity, spec_node
from pipeline.progress.stopping import estimate_key
from pipeline.spec import CampaignSpec, EvalRecipe
from pipeline.store import Layout, Store, StoreError, newest
from workers.segments import load_progress  # json only: no torch in the status view

RATE_WINDOW_S = 600.0  # windows/s is measured over the segments of the last ten minutes


@dataclass(frozen=True)
class ShardStatus:
    """A running (or lost) shard of an eval: its own bar in status and the live view."""

    shard: int
    done: int  # batches of the shard scored (by any attempt)
    batches: int
    lost: bool = False  # its attempt was lost; it waits to be placed again

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "done": self.done, "batches": self.batches, "lost": self.lost}


@dataclass
class EvalStatus:
    seed: int
    recipe: str
    state: str  # DONE, ESTIMATED, RUNNING, PENDING, FAILED, WAITING (its training is not done), UNPLANNED
    batches: int | None  # None until planned
    windows: int | None
    estimate: Estimate | None
    final_bpb: float | None = None
    windows_per_s: float | None = None
    eta_s: float | None = None
    spent_usd: float = 0.0
    to_finish_usd: float | None = None
    running_units: int = 0
    error: str | None = None
    lost_units: int = 0  # shards whose attempt was lost (a node died) and that wait to be placed again
    shards: list[ShardStatus] = field(default_factory=list)  # the running and lost shards, by shard

    @property
    def batches_done(self) -> int:
        return self.estimate.n if self.estimate else (self.batches or 0) if self.state == "DONE" else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "recipe": self.recipe, "state": self.state, "batches": self.batches, "windows": self.windows,
            "batches_done": self.batches_done, "done": (self.batches_done / self.batches) if self.batches else 0.0,
            "estimate": self.estimate.as_dict() if self.estimate else None, "val_bpb": self.final_bpb,
            "windows_per_s": self.windows_per_s, "eta_s": self.eta_s, "spent_usd": self.spent_usd,
            "to_finish_usd": self.to_finish_usd, "running_units": self.running_units, "error": self.error,
            "lost_units": self.lost_units, "shards": [sh.as_dict() for sh in self.shards],
        }


@dataclass
class TrainStatus:
    seed: int
    state: str
    steps: int | None = None
    spent_usd: float = 0.0
    error: str | None = None
    planned_steps: int | None = None  # while it runs: of how many (the step cap, or the script's N)
    last_val: dict[str, float] | None = None  # a script's latest `step:S/N val_loss val_bpb` line

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "state": self.state, "steps": self.steps, "planned_steps": self.planned_steps,
            "last_val": self.last_val, "spent_usd": self.spent_usd, "error": self.error,
        }


def training_progress(spec: CampaignSpec, store: Store, layout: Layout, seed: int) -> tuple[int | None, int | None, dict | None]:
    """(step, of, last val line) of a seed that is training: a script's from its log in the store,
    ours from its newest checkpoint."""
    from pipeline.spec import ScriptTrain

    if isinstance(spec.train, ScriptTrain):
        from workers.golf_log import parse_log  # text only
        from workers.script_logs import read_log

        _, text = read_log(store, layout, seed)
        m = parse_log(text).metrics()
        return m.get("steps"), m.get("planned_steps"), m.get("last_val")
    found = newest(store, f"{layout.train_dir(seed)}/ckpt", Layout.ckpt_commit)
    return (found[0] if found else 0), spec.train.max_steps, None


@dataclass
class CampaignStatus:
    name: str
    store: str
    time: float
    trains: list[TrainStatus]
    evals: list[EvalStatus]
    cost: CostReport
    waiting: dict[str, str] = field(default_factory=dict)  # unit → what it waits for
    failed: dict[str, str] = field(default_factory=dict)  # unit → error
    driver: str | None = None  # the live driver, if any
    nodes: list[NodeIdentity] = field(default_factory=list)  # the cluster as its driver last saw it
    pods: dict[str, str] = field(default_factory=dict)  # pod id → RunPod's verdict, where asked (--pods)

    @property
    def done(self) -> float:
        """Share of all eval batches done (planned evals only)."""
        total = sum(e.batches or 0 for e in self.evals)
        return sum(e.batches_done for e in self.evals) / total if total else 0.0

    @property
    def eta_s(self) -> float | None:
        etas = [e.eta_s for e in self.evals if e.state == "RUNNING"]
        if any(e.lost_units for e in self.evals):  # what they have left is not being scored: no ETA
            return None
        return max(etas) if etas and all(x is not None for x in etas) else None

    @property
    def to_finish_usd(self) -> float | None:
        left = [e.to_finish_usd for e in self.evals if e.state not in ("DONE", "ESTIMATED")]
        return sum(left) if all(x is not None for x in left) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "campaign": self.name, "store": self.store, "time": self.time, "driver": self.driver,
            "done": self.done, "eta_s": self.eta_s, "spent_usd": self.cost.total_usd, "to_finish_usd": self.to_finish_usd,
            "trains": [t.as_dict() for t in self.trains], "evals": [e.as_dict() for e in self.evals],
            "waiting": self.waiting, "failed": self.failed, "cost": self.cost.as_dict(),
            "nodes": [n.as_dict() for n in self.nodes], "pods": self.pods,
        }


def rate(progress, window_s: float = RATE_WINDOW_S) -> float | None:
    """Batches per second from the segments flushed in the last `window_s` (all shards together):
    the batches after the first of them, over the time since it."""
    times = sorted((s.time, s.batches) for s in progress.segments if s.time is not None)
    if len(times) < 2:
        return None
    newest = times[-1][0]
    recent = [(t, b) for t, b in times if t >= newest - window_s]
    if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
        return None
    return sum(b for _, b in recent[1:]) / (recent[-1][0] - recent[0][0])


def committed_until(store: Store, layout: Layout, unit: str, attempt: str) -> float | None:
    """When an attempt of a unit (its id) last committed work (its newest segment or checkpoint),
    from the store."""
    parts = unit.split("/")
    if parts[0] == "eval":
        prog = load_progress(store, layout.shard_dir(int(parts[1]), parts[2], int(parts[3])))
        times = [s.time for s in prog.segments if s.attempt == attempt and s.time is not None]
        return max(times) if times else None
    times = []
    for key in store.list(f"{layout.train_dir(int(parts[1]))}/ckpt"):
        if key.endswith(f"-{attempt}/commit.json"):
            times.append(store.get_json(key).get("time"))
    times = [t for t in times if t is not None]
    return max(times) if times else None


def campaign_status(spec: CampaignSpec, store: Store, now: float | None = None, live_run: str | None = None) -> CampaignStatus:
    """`live_run`: the run id of the driver that holds the campaign now (its open attempts run)."""
    now = time.time() if now is None else now
    layout = Layout(spec.name)
    events = Ledger(store, layout, "status").events()  # in time order
    default = spec_node(spec.cluster.pricing)
    cost = cost_report(events, now, {live_run} if live_run else set(), default, lambda a: committed_until(store, layout, a.unit, a.attempt))
    latest = latest_states(events)
    running = {u for u, e in latest.items() if e["state"] == "RUNNING" and e.get("run") == live_run}
    # attempts the live driver lost (INTERRUPTED, then PENDING for a retry): their work is not
    # being done, whatever the other shards' rate says
    lost = {
        u for u, e in latest.items()
        if e.get("run") == live_run and (e["state"] == "INTERRUPTED" or (e["state"] == "PENDING" and "delay_s" in e))
    } if live_run else set()
    failed = {u: (e.get("reason") or e.get("error") or "") for u, e in latest.items() if e["state"] == "FAILED"}
    # what waits now (the live driver), or what the last driver left waiting in vain
    newest = events[-1].get("run") if events else None
    waiting: dict[str, str] = {}
    for e in events:
        if e.get("event") == "waiting" and e.get("run") == (live_run or newest):
            if e.get("what"):
                waiting[e["key"]] = e["what"]
            else:
                waiting.pop(e["key"], None)

    trains = []
    for seed in spec.seeds:
        u = f"train/{seed}"
        state, steps, unreadable = "PENDING", None, None
        if store.exists(layout.manifest(seed)):
            state, steps, unreadable = _manifest_steps(store, layout.manifest(seed))
        elif u in running:
            state = "RUNNING"
        elif u in failed:
            state = "FAILED"
        line = cost.by_seed_recipe.get((seed, "train"))
        t = TrainStatus(seed, state, steps, line.usd if line else 0.0, unreadable or failed.get(u))
        if state == "RUNNING":
            t.steps, t.planned_steps, t.last_val = training_progress(spec, store, layout, seed)
        trains.append(t)

    evals = []
    for seed in spec.seeds:
        trained = store.exists(layout.manifest(seed))
        for recipe in spec.evals:
            evals.append(_eval_status(store, layout, seed, recipe, trained, running, failed, cost, lost))
    _price_unstarted(evals)
    snaps = [e for e in events if e.get("event") == "cluster" and e.get("run") == (live_run or newest)]
    nodes = [NodeIdentity.from_dict(n) for n in max(snaps, key=lambda e: e["time"])["nodes"]] if snaps else []
    return CampaignStatus(spec.name, store.uri, now, trains, evals, cost, waiting, failed, nodes=nodes)


def _manifest_steps(store: Store, key: str) -> tuple[str, int | None, str | None]:
    """(state, steps, error) of a seed whose training manifest is in the store: DONE, or UNREADABLE
    with why (a corrupt manifest marks its seed; the rest of the status still shows)."""
    try:
        m = store.get_json(key)
    except StoreError as e:
        return "UNREADABLE", None, str(e)
    train = m.get("train", {}) if isinstance(m, dict) else None
    if not isinstance(train, dict):
        return "UNREADABLE", None, f"{store.uri}/{key}: not a training manifest"
    steps = train.get("steps")
    return "DONE", steps if isinstance(steps, int) else None, None


def _price_unstarted(evals: list[EvalStatus]) -> None:
    """An eval with no batch done yet costs to finish what its recipe's batches cost on other
    seeds (the same recipe scores the same number of batches on every seed)."""
    per_batch: dict[str, float] = {}
    batches: dict[str, int] = {}
    for e in evals:
        if e.batches:
            batches[e.recipe] = e.batches
        if e.batches_done and e.spent_usd and e.recipe not in per_batch:
            per_batch[e.recipe] = e.spent_usd / e.batches_done
    for e in evals:
        if e.to_finish_usd is None and e.recipe in per_batch and e.state not in ("DONE", "ESTIMATED", "FAILED"):
            n = e.batches or batches.get(e.recipe)
            if n is not None:
                e.to_finish_usd = (n - e.batches_done) * per_batch[e.recipe]


def _eval_status(store, layout, seed, recipe: EvalRecipe, trained, running, failed, cost, lost=frozenset()) -> EvalStatus:
    units = [u for u in running if u.startswith(f"eval/{seed}/{recipe.name}/")]
    lost_here = [u for u in lost if u.startswith(f"eval/{seed}/{recipe.name}/")]
    lost_units = len(lost_here)
    line = cost.by_seed_recipe.get((seed, recipe.name))
    spent = line.usd if line else 0.0
    err = next((failed[u] for u in sorted(failed) if u.startswith(f"eval/{seed}/{recipe.name}/")), None)
    if store.exists(layout.result(seed, recipe.name)):
        r = store.get_json(layout.result(seed, recipe.name))
        est = Estimate(r["val_bpb"], 0.0, r["batches"], r["batches"], recipe.shardable)
        return EvalStatus(seed, recipe.name, "DONE", r["batches"], r["windows"], est, r["val_bpb"], spent_usd=spent, to_finish_usd=0.0)
    if not store.exists(layout.plan(seed, recipe.name)):
        state = "FAILED" if err else ("UNPLANNED" if trained else "WAITING")
        return EvalStatus(seed, recipe.name, state, None, None, None, spent_usd=spent, error=err)
    plan = store.get_json(layout.plan(seed, recipe.name))
    N = plan["batches"]
    prog = load_progress(store, layout.eval_dir(seed, recipe.name))
    recs = [prog.records[b] for b in sorted(prog.records)]
    est = bpb_estimate(Batches.of(recs), N, sample=recipe.shardable) if recs else None
    estimated = estimate_key(layout, seed, recipe)
    if estimated is not None and store.exists(estimated):
        state = "ESTIMATED"
    elif units or lost_units:
        state = "RUNNING"
    elif err:
        state = "FAILED"
    else:
        state = "PENDING"
    shards = [
        ShardStatus(k, sum(1 for b in plan["shards"][k] if b in prog.records), len(plan["shards"][k]), u in lost_here)
        for k, u in sorted((int(u.rsplit("/", 1)[1]), u) for u in units + lost_here)
        if k < len(plan["shards"])
    ]
    bps = rate(prog)
    wpb = plan["windows"] / N if N else 0.0
    left = N - len(recs)
    eta = left / bps if bps and state == "RUNNING" and not lost_units else None
    to_finish = None
    if state == "ESTIMATED":
        to_finish = 0.0
    elif line and line.gpu_s and recs and left >= 0:
        usd_per_batch = line.usd / len(recs)  # what a batch cost so far, lost work included
        to_finish = left * usd_per_batch
    return EvalStatus(
        seed, recipe.name, state, N, plan["windows"], est, None, bps * wpb if bps else None, eta, spent, to_finish, len(units), err,
        lost_units, shards,
    )
