"""What a campaign has cost, from its ledger alone (docs/progress-cost.md "Cost"): the one cost model that the
budget, `pipeline status`, `pipeline cost` and the report all use.

The bill is what the campaign's nodes charge: every second each node was alive while a driver
watched it (its `cluster` events: from the snapshot a node first appears in to the next one, or to
the run's end), at the node's own $/hour, whether a unit held its GPUs or not: a head pod with no
Ray GPUs and an 8×H100 pod running 1-GPU evals bill in full. `NodeBill` is that sum for one run; the
driver keeps one for its own run and adds what earlier runs cost (`cost_report`), so its budget and
`pipeline cost` give the same number for the same ledger. Attempts of a run no driver watched
(`pipeline eval` by hand, old ledgers) are billed by `attempt_cost` alone.

The bill is split by `attempt_cost`: each attempt holds GPUs from its start to its end, its
GPU-seconds × its nodes' price per GPU-second being

- useful: work whose records reached the store (a DONE attempt; one that died, or was stopped by its
  eval's stop rule, up to its last committed segment or checkpoint: a resumed attempt carries on
  from there),
- lost: the rest of an attempt that died (work done since its last commit, redone by the retry),
  and all of an attempt that failed before committing anything,

and idle is the rest of the bill: node time no attempt held. Pod time before a driver first looked
or after it ended is not in the ledger, so not in the bill.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pipeline.records.nodes import NodeIdentity

END_STATES = ("DONE", "ESTIMATED", "INTERRUPTED", "FAILED")
Snapshots = list[tuple[float, str, list[NodeIdentity]]]  # (time, run, nodes) of `cluster` events


@dataclass
class AttemptCost:
    """One attempt of one unit, as the ledger tells it."""

    unit: str
    attempt: str
    run: str
    start: float
    gpus: float
    end: float | None = None
    outcome: str | None = None  # an END_STATES value; None while running or when its driver died
    committed_until: float | None = None
    batches: int | None = None
    nodes: list[str] = field(default_factory=list)
    usd_per_gpu_hour: float = 0.0  # set from attempt_cost by cost_report
    gpu_type: str = "unknown"
    error: str | None = None

    @property
    def seed(self) -> int:
        return int(self.unit.split("/")[1])

    @property
    def recipe(self) -> str | None:
        parts = self.unit.split("/")
        return parts[2] if parts[0] == "eval" else None

    def seconds(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)

    def split(self, now: float) -> tuple[float, float]:
        """(useful, lost) GPU-seconds."""
        total = self.seconds(now) * self.gpus
        if self.outcome == "DONE":
            return total, 0.0
        if self.outcome is None and self.end is None:  # still running: nothing is lost yet
            return total, 0.0
        kept = 0.0 if self.committed_until is None else min(max(0.0, self.committed_until - self.start), self.seconds(now))
        return kept * self.gpus, total - kept * self.gpus


@dataclass(frozen=True)
class AttemptBill:
    """What one attempt cost, from `attempt_cost`."""

    useful_usd: float
    lost_usd: float
    gpu_s: float
    usd_per_gpu_hour: float
    gpu_type: str

    @property
    def usd(self) -> float:
        return self.useful_usd + self.lost_usd


def attempt_cost(attempt: AttemptCost, nodes: Mapping[str, NodeIdentity], now: float, default: NodeIdentity | None = None) -> AttemptBill:
    """An attempt's GPU-seconds × the price per GPU-second of the nodes it was placed on (`nodes`:
    node id → node, as known when it started; see `nodes_at`), split into useful and lost. An
    attempt on no known node pays `default`'s price (the spec's), or nothing."""
    mine = [nodes[n] for n in attempt.nodes if n in nodes]
    if mine:
        price, gpu_type = sum(n.usd_per_gpu_hour for n in mine) / len(mine), mine[0].gpu_type
    elif default is not None:
        price, gpu_type = default.usd_per_gpu_hour, default.gpu_type
    else:
        price, gpu_type = 0.0, "unknown"
    useful, lost = attempt.split(now)
    per_s = price / 3600.0
    return AttemptBill(useful * per_s, lost * per_s, useful + lost, price, gpu_type)


def nodes_at(snapshots: Snapshots, t: float) -> dict[str, NodeIdentity]:
    """Every node the snapshots up to `t` name (the first snapshot's if none is that early)."""
    known: dict[str, NodeIdentity] = {}
    for when, _, nodes in snapshots:
        if when > t and known:
            break
        for n in nodes:
            known[n.node_id] = n
    return known


class NodeBill:
    """What the nodes one driver run watched have billed: each alive node from the snapshot it is
    in to the next snapshot (or `until`), at its own $/hour. Fed snapshots in time order; the same
    snapshots give the same dollars, to the bit, wherever they are summed (driver or CLI)."""

    def __init__(self) -> None:
        self.closed_usd = 0.0  # up to `since`
        self.since: float | None = None
        self.nodes: list[NodeIdentity] = []

    def snapshot(self, t: float, nodes: list[NodeIdentity]) -> None:
        if self.since is not None:
            self.closed_usd += self.usd_per_s * max(0.0, t - self.since)
        self.since, self.nodes = t if self.since is None else max(t, self.since), nodes

    @property
    def alive(self) -> list[NodeIdentity]:
        return [n for n in self.nodes if n.alive]

    @property
    def usd_per_s(self) -> float:
        """The burn rate now: every alive node's $/hour, GPUs used or not."""
        return sum(n.hourly_usd for n in self.alive) / 3600.0

    def usd_per_gpu_s(self) -> float | None:
        """The burn rate per GPU Ray can schedule on (what a GPU-second of work costs with the
        cluster as it is, its idle nodes included); None with no GPUs."""
        gpus = sum(n.gpus for n in self.alive)
        return self.usd_per_s / gpus if gpus > 0 else None

    def usd(self, until: float) -> float:
        if self.since is None:
            return 0.0
        return self.closed_usd + self.usd_per_s * max(0.0, until - self.since)


@dataclass
class Line:
    """Cost of some attempts (a seed, a recipe, the campaign)."""

    useful_usd: float = 0.0
    lost_usd: float = 0.0
    gpu_s: float = 0.0
    attempts: int = 0

    @property
    def usd(self) -> float:
        return self.useful_usd + self.lost_usd

    def add(self, b: AttemptBill) -> None:
        self.useful_usd += b.useful_usd
        self.lost_usd += b.lost_usd
        self.gpu_s += b.gpu_s
        self.attempts += 1

    def as_dict(self) -> dict[str, float]:
        return {"usd": self.usd, "useful_usd": self.useful_usd, "lost_usd": self.lost_usd, "gpu_hours": self.gpu_s / 3600.0, "attempts": self.attempts}


@dataclass
class CostReport:
    attempts: list[AttemptCost]
    campaign: Line
    by_seed: dict[int, Line]
    by_recipe: dict[str, Line]  # "train" for training
    by_seed_recipe: dict[tuple[int, str], Line]
    idle_usd: float | None  # None: no driver recorded the cluster
    cluster_usd: float | None  # what the watched nodes billed in all (their runs' useful + lost + idle)
    gpu_types: list[str]
    total_usd: float = 0.0  # the bill: the watched nodes' and the unwatched runs' attempts
    # the bill as (start, end, $/s) pieces: each snapshot of a watched run, each unwatched attempt
    pieces: list[tuple[float, float, float]] = field(default_factory=list)

    def usd_at(self, times: Any) -> Any:
        """The bill as it stood at each of `times` (a numpy array of unix times): the report's
        cost over time, ending at `total_usd`."""
        import numpy as np

        out = np.zeros(len(times))
        for start, end, per_s in self.pieces:
            out += np.clip(times - start, 0.0, max(0.0, end - start)) * per_s
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign.as_dict(), "idle_usd": self.idle_usd, "cluster_usd": self.cluster_usd, "total_usd": self.total_usd,
            "by_seed": {str(s): v.as_dict() for s, v in self.by_seed.items()},
            "by_recipe": {r: v.as_dict() for r, v in self.by_recipe.items()},
            "by_seed_recipe": {f"{s}/{r}": v.as_dict() for (s, r), v in self.by_seed_recipe.items()},
            "gpu_types": self.gpu_types,
        }


def attempts_from_events(events: Iterable[dict[str, Any]]) -> tuple[list[AttemptCost], list[tuple[float, str, list[NodeIdentity]]]]:
    """The ledger's attempts, and the cluster snapshots (time, run, nodes) the drivers recorded."""
    attempts: dict[str, AttemptCost] = {}
    placed: dict[str, list[str]] = defaultdict(list)
    snapshots: list[tuple[float, str, list[NodeIdentity]]] = []
    for e in sorted(events, key=lambda e: e.get("time", 0.0)):
        kind, att = e.get("event"), e.get("attempt")
        if kind == "cluster":
            snapshots.append((e["time"], e.get("run", ""), [NodeIdentity.from_dict(n) for n in e.get("nodes", [])]))
        elif kind == "placed" and att and e.get("node_id"):
            placed[att].append(e["node_id"])
        elif kind == "state" and att:
            state = e.get("state")
            if state == "RUNNING":
                attempts[att] = AttemptCost(e["unit"], att, e.get("run", ""), e["time"], float(e.get("gpus", 1.0)))
            elif state in END_STATES and att in attempts:
                a = attempts[att]
                a.end, a.outcome = e["time"], state
                a.committed_until = e.get("committed_until", a.committed_until)
                a.batches = e.get("batches", a.batches)
                a.error = e.get("reason") or e.get("error")
    for att, nodes in placed.items():
        if att in attempts:
            attempts[att].nodes = sorted(set(nodes))
    return sorted(attempts.values(), key=lambda a: a.start), snapshots


def _close_open_attempts(attempts: list[AttemptCost], run_ends: dict[str, float], live_runs: set[str]) -> None:
    """An attempt with no end event ran until its driver stopped (or still runs)."""
    for a in attempts:
        if a.end is None and a.run not in live_runs and a.run in run_ends:
            a.end = max(run_ends[a.run], a.start)


def node_bills(snapshots: Snapshots, run_ends: Mapping[str, float]) -> dict[str, tuple[NodeBill, float | None]]:
    """Each watched run's NodeBill and when it ended (None: still running, billed up to now)."""
    bills: dict[str, NodeBill] = {}
    for t, run, nodes in snapshots:
        bills.setdefault(run, NodeBill()).snapshot(t, nodes)
    return {run: (bill, run_ends.get(run)) for run, bill in bills.items()}


def _pieces(snapshots: Snapshots, bills: Mapping[str, tuple[NodeBill, float | None]], now: float) -> list[tuple[float, float, float]]:
    """Each snapshot of a watched run as a (start, end, $/s) piece of the bill: up to the run's
    next snapshot, or its end."""
    by_run: dict[str, list[tuple[float, list[NodeIdentity]]]] = defaultdict(list)
    for t, run, nodes in snapshots:
        by_run[run].append((t, nodes))
    out = []
    for run, snaps in by_run.items():
        end = bills[run][1]
        for (t, nodes), nxt in zip(snaps, [*snaps[1:], (now if end is None else end, [])], strict=True):
            bill = NodeBill()
            bill.snapshot(t, nodes)
            out.append((t, max(t, nxt[0]), bill.usd_per_s))
    return out


def cost_report(
    events: list[dict[str, Any]],
    now: float,
    live_runs: set[str] = frozenset(),
    default: NodeIdentity | None = None,
    committed: Callable[[AttemptCost], float | None] | None = None,
) -> CostReport:
    """`live_runs`: runs whose driver still holds the campaign (their open attempts are running).
    `committed` answers, for an attempt whose driver died before recording its end, when it last
    committed work (from the store), so what it did before dying counts as useful."""
    attempts, snapshots = attempts_from_events(events)
    run_ends: dict[str, float] = {}
    for e in events:
        run = e.get("run", "")
        run_ends[run] = max(run_ends.get(run, 0.0), e.get("time", 0.0))
    for run in live_runs:
        run_ends.pop(run, None)
    _close_open_attempts(attempts, run_ends, set(live_runs))
    for a in attempts:
        if committed is not None and a.outcome is None and a.run not in live_runs and a.committed_until is None:
            a.committed_until = committed(a)
    bills = node_bills(snapshots, run_ends)
    campaign, by_seed, by_recipe, by_sr = Line(), defaultdict(Line), defaultdict(Line), defaultdict(Line)
    held = defaultdict(float)  # watched run → $ of the GPU time its attempts held
    unwatched = 0.0
    pieces = _pieces(snapshots, bills, now)
    for a in attempts:
        bill = attempt_cost(a, nodes_at(snapshots, a.start), now, default)
        a.usd_per_gpu_hour, a.gpu_type = bill.usd_per_gpu_hour, bill.gpu_type
        recipe = a.recipe or "train"
        for line in (campaign, by_seed[a.seed], by_recipe[recipe], by_sr[(a.seed, recipe)]):
            line.add(bill)
        if a.run in bills:
            held[a.run] += bill.usd
        else:
            unwatched += bill.usd
            pieces.append((a.start, a.start + a.seconds(now), a.gpus * bill.usd_per_gpu_hour / 3600.0))
    cluster = sum(bill.usd(now if end is None else end) for bill, end in bills.values()) if bills else None
    idle = sum(max(0.0, bill.usd(now if end is None else end) - held[run]) for run, (bill, end) in bills.items()) if bills else None
    types = sorted({a.gpu_type for a in attempts})
    return CostReport(attempts, campaign, dict(by_seed), dict(by_recipe), dict(by_sr), idle, cluster, types, (cluster or 0.0) + unwatched, pieces)
