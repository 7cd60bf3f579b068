"""A campaign's schedule on a pod mix, in simulated time, decided by the driver's own `Scheduler`.

The loop below is the driver's (pipeline/run/driver.py `_run`) with the executor replaced by a clock:
the same Scheduler object (priorities, shard counts, the capacity rules of pipeline/run/scheduler.py)
says which units start, each start takes GPUs on one node as Ray places a group (best fit, the
scheduler's own `room` rule), and a unit ends after the time the throughput table gives it. A
trained seed's evals are planned when the loop next looks, cut into `default_shards` shards, as
the driver plans them. So the plan changes when the scheduler does.

Expected pod deaths (`deaths_per_hour`, per GPU-hour a unit holds) lengthen each unit by the work a
death loses: up to one checkpoint interval, plus the unit's restart.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from pipeline.run.context import default_shards, unit_gpus
from pipeline.plan.mixes import Mix
from pipeline.plan.throughput import GpuRates, ThroughputTable, rates_for, short_type
from pipeline.plan.work import CampaignWork
from pipeline.run.scheduler import Attempt, Capacity, Scheduler
from pipeline.spec import CampaignSpec
from pipeline.records.units import Unit, UnitState


@dataclass(frozen=True)
class SimAttempt:
    unit: str
    start: float
    end: float
    gpus: float
    node: int
    usd: float  # its GPUs × seconds × its pod's $ per GPU-second


@dataclass
class SimResult:
    mix: Mix
    makespan_s: float
    attempts: list[SimAttempt] = field(default_factory=list)

    @property
    def total_usd(self) -> float:
        """Every pod from rent to the campaign's end, GPUs used or not (the bill of progress/cost.py)."""
        return self.mix.usd_per_hour * self.makespan_s / 3600.0

    @property
    def useful_usd(self) -> float:
        return sum(a.usd for a in self.attempts)

    @property
    def idle_usd(self) -> float:
        return max(0.0, self.total_usd - self.useful_usd)

    @property
    def gpu_hours(self) -> float:
        return self.mix.gpus * self.makespan_s / 3600.0

    @property
    def utilisation(self) -> float:
        held = sum(a.gpus * (a.end - a.start) for a in self.attempts)
        return held / (self.mix.gpus * self.makespan_s) if self.makespan_s > 0 and self.mix.gpus > 0 else 0.0

    def by_seed_recipe(self) -> dict[tuple[int, str], tuple[float, float]]:
        """(seed, recipe or "train") → (seconds its units held, $)."""
        out: dict[tuple[int, str], tuple[float, float]] = {}
        for a in self.attempts:
            parts = a.unit.split("/")
            key = (int(parts[1]), parts[2] if parts[0] == "eval" else "train")
            s, usd = out.get(key, (0.0, 0.0))
            out[key] = (s + a.end - a.start, usd + a.usd)
        return out

    def as_dict(self) -> dict:
        return {
            "mix": self.mix.name, "makespan_h": self.makespan_s / 3600.0, "gpu_hours": self.gpu_hours, "usd": self.total_usd,
            "useful_usd": self.useful_usd, "idle_usd": self.idle_usd, "utilisation": self.utilisation,
            "usd_per_hour": self.mix.usd_per_hour, "pod_start_s": self.mix.start_s,
            "prices": sorted({f"{p.gpu_type} ${p.usd_per_gpu_hour:g}/GPU-h ({p.price_source})" for p in self.mix.pods}),
            "by_seed_recipe": {f"{s}/{r}": {"seconds": v[0], "usd": v[1]} for (s, r), v in sorted(self.by_seed_recipe().items())},
        }


class Durations:
    """A unit's seconds on a GPU type, from the throughput table."""

    def __init__(self, spec: CampaignSpec, work: CampaignWork, table: ThroughputTable, deaths_per_hour: float = 0.0):
        self.spec, self.work, self.table, self.deaths = spec, work, table, deaths_per_hour

    def rates(self, gpu_type: str) -> GpuRates:
        r = rates_for(self.table, gpu_type)
        assert r is not None, gpu_type  # missing() was checked first
        return r

    def missing(self, gpu_types: set[str]) -> list[str]:
        """What the table lacks for these GPU types: 'H100: train, ttt'."""
        out = []
        for g in sorted(gpu_types):
            r = rates_for(self.table, g)
            need = (["train"] if self.work.train is not None else []) + [e.name for e in self.work.recipes]
            lack = need if r is None else [n for n in need if (r.train is None if n == "train" else n not in r.recipes)]
            if lack:
                out.append(f"{g}: {', '.join(lack)}")
        return out

    def of(self, u: Unit, batches: int | None, gpu_type: str) -> float:
        r = self.rates(gpu_type)
        if u.kind == "train":
            t = self.work.train
            steps_s = t.max_wallclock_s if t.max_steps is None else min(t.max_steps * r.train.step_s, t.max_wallclock_s)
            d, restart = r.train.startup_s + steps_s, r.train.startup_s
        else:
            rr = r.recipes[u.recipe]
            d, restart = rr.startup_s + (batches or 0) * rr.batch_s, rr.startup_s
        if self.deaths > 0:  # expected deaths over the unit's GPU-hours, each losing ≤ one checkpoint interval + a restart
            d += self.deaths * unit_gpus(self.spec, u) * d / 3600.0 * (min(self.spec.checkpoint_every_s, d) + restart)
        return d


def check_fits(spec: CampaignSpec, mix: Mix) -> None:
    """A mix on which some unit can never start is one line naming the unit (the Scheduler would
    leave it waiting for capacity)."""
    cap = Capacity(tuple(p.gpus for p in mix.pods), span=spec.cluster.groups_span_nodes)
    units = ([Unit.train(spec.seeds[0])] if spec.artifacts is None else []) + [Unit.eval(spec.seeds[0], e.name) for e in spec.evals]
    stuck = []
    for u in units:
        need = unit_gpus(spec, u)
        if not cap.fits(need):
            what = "train" if u.kind == "train" else f"eval {u.recipe}"
            stuck.append(f"{what} (e.g. {u}) needs {need:g} GPUs; {cap.says(need)}")
    if stuck:
        raise ValueError(f"--pods {mix.name}: {' and '.join(stuck)}: {'they' if len(stuck) > 1 else 'it'} could never run")


def simulate(spec: CampaignSpec, work: CampaignWork, mix: Mix, durations: Durations) -> SimResult:
    check_fits(spec, mix)
    nodes = [p.gpus for p in mix.pods]
    free = list(nodes)
    types = [p.gpu_type for p in mix.pods]
    price_s = [p.usd_per_gpu_hour / 3600.0 for p in mix.pods]
    sched = Scheduler(lambda u: unit_gpus(spec, u))
    unplanned: list[int] = []
    for s in spec.seeds:
        sched.add(Unit.train(s), UnitState.DONE if spec.artifacts is not None else UnitState.PENDING)
        if spec.artifacts is not None:
            unplanned.append(s)
    now = mix.start_s + durations.table.driver_start_s
    running: list[tuple[float, int, object]] = []  # (end, seq, handle) heap
    placed: dict[int, list[tuple[int, float]]] = {}  # handle → [(node, gpus)]
    batches_of: dict[Unit, int] = {}
    out: list[SimAttempt] = []
    seq = 0
    while True:
        cap = Capacity(tuple(nodes), tuple(free), span=spec.cluster.groups_span_nodes)
        if unplanned:  # the driver's EvalPlanner.plan_ready: a trained seed's evals, sharded over the GPUs now
            for seed in unplanned:
                for r in work.recipes:
                    per_shard = r.shard_batches(seed, default_shards(cap))
                    shards = sched.add_eval(seed, r.name, per_shard, [UnitState.PENDING] * len(per_shard))
                    batches_of.update(zip(shards.units, per_shard, strict=True))
            unplanned = []
        for u in sched.launches(cap, now=now):
            gpus = unit_gpus(spec, u)
            where = _place(free, gpus, cap.packs(gpus))
            for i, g in where:
                free[i] -= g
            node = where[0][0]
            d = durations.of(u, batches_of.get(u), types[node])
            seq += 1
            placed[seq] = where
            sched.started(seq, Attempt(u, str(seq), now, gpus))
            heapq.heappush(running, (now + d, seq, seq))
            out.append(SimAttempt(u.id, now, now + d, gpus, node, sum(g * price_s[i] for i, g in where) * d))
        if not running:
            break
        now = running[0][0]
        while running and running[0][0] <= now:
            _, _, handle = heapq.heappop(running)
            att = sched.ended(handle)
            for i, g in placed.pop(handle):
                free[i] += g
            sched.move(att.unit, UnitState.DONE)
            if att.unit.kind == "train":
                unplanned.append(att.unit.seed)
    left = sched.in_state(UnitState.PENDING)
    if left:  # check_fits rules this out; a scheduler change that strands units must not pass silently
        raise RuntimeError(f"--pods {mix.name}: the scheduler left {len(left)} unit(s) PENDING ({left[0]}, ...)")
    return SimResult(mix, now, out)


def _place(free: list[float], gpus: float, packs: bool) -> list[tuple[int, float]]:
    """Where Ray puts a unit the Scheduler started: a group on the node that fits it best (the
    Scheduler's `room` picks the same); a 1-GPU task, or a group allowed to span, wherever GPUs are
    free, fullest node first."""
    if packs or gpus <= 1:
        fit = [i for i, f in enumerate(free) if f >= gpus]
        if fit:
            return [(min(fit, key=lambda i: free[i]), gpus)]
    out, need = [], gpus
    for i in sorted(range(len(free)), key=lambda i: -free[i]):
        take = min(free[i], need)
        if take > 0:
            out.append((i, take))
            need -= take
        if need <= 1e-9:
            break
    return out


def gpu_types(mix: Mix) -> set[str]:
    return {short_type(p.gpu_type) for p in mix.pods}
