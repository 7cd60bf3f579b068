"""What a campaign has cost, from its ledger alone (README "Cost").

Each unit attempt holds GPUs from its start to its end; its GPU-seconds × its node's price per
GPU-second is split into

- useful: work whose records reached the store (a DONE attempt; one that died, or was stopped by its
  eval's stop rule, up to its last committed segment or checkpoint: a resumed attempt carries on
  from there),
- lost: the rest of an attempt that died (work done since its last commit, redone by the retry),
  and all of an attempt that failed before committing anything,
- idle: GPU time of the cluster's nodes that no attempt held, while a driver watched the cluster
  (its `cluster` events: nodes, GPUs, price); pod time before or after a driver is not seen.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pipeline.progress.pricing import NodeIdentity

END_STATES = ("DONE", "ESTIMATED", "INTERRUPTED", "FAILED")


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
    usd_per_gpu_hour: float = 0.0
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

    def add(self, a: AttemptCost, now: float) -> None:
        useful, lost = a.split(now)
        per_s = a.usd_per_gpu_hour / 3600.0
        self.useful_usd += useful * per_s
        self.lost_usd += lost * per_s
        self.gpu_s += useful + lost
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
    cluster_usd: float | None  # what the watched nodes cost in all, useful + lost + idle
    gpu_types: list[str]

    @property
    def total_usd(self) -> float:
        return self.campaign.usd + (self.idle_usd or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign.as_dict(), "idle_usd": self.idle_usd, "total_usd": self.total_usd,
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


def _price(a: AttemptCost, snapshots: list[tuple[float, str, list[NodeIdentity]]], default: NodeIdentity | None) -> None:
    """The attempt's price: its nodes' in the cluster snapshot nearest before its start."""
    known: dict[str, NodeIdentity] = {}
    for t, _, nodes in snapshots:
        if t > a.start and known:
            break
        for n in nodes:
            known[n.node_id] = n
    mine = [known[n] for n in a.nodes if n in known]
    if mine:
        a.usd_per_gpu_hour = sum(n.usd_per_gpu_hour for n in mine) / len(mine)
        a.gpu_type = mine[0].gpu_type
    elif default is not None:
        a.usd_per_gpu_hour, a.gpu_type = default.usd_per_gpu_hour, default.gpu_type


def _close_open_attempts(attempts: list[AttemptCost], run_ends: dict[str, float], live_runs: set[str]) -> None:
    """An attempt with no end event ran until its driver stopped (or still runs)."""
    for a in attempts:
        if a.end is None and a.run not in live_runs and a.run in run_ends:
            a.end = max(run_ends[a.run], a.start)


def _idle(snapshots, attempts: list[AttemptCost], run_ends: dict[str, float], now: float) -> tuple[float | None, float | None]:
    """GPU-seconds × price of the watched nodes, minus what attempts used of them."""
    if not snapshots:
        return None, None
    by_run: dict[str, list[tuple[float, list[NodeIdentity]]]] = defaultdict(list)
    for t, run, nodes in snapshots:
        by_run[run].append((t, nodes))
    cluster_usd = 0.0
    for run, snaps in by_run.items():
        end = run_ends.get(run, now)
        for i, (t, nodes) in enumerate(snaps):
            t_next = snaps[i + 1][0] if i + 1 < len(snaps) else end
            cluster_usd += sum(n.gpus * n.usd_per_gpu_hour / 3600.0 for n in nodes if n.alive) * max(0.0, t_next - t)
    used = sum(a.seconds(now) * a.gpus * a.usd_per_gpu_hour / 3600.0 for a in attempts if a.run in by_run)
    return max(0.0, cluster_usd - used), cluster_usd


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
    for a in attempts:
        _price(a, snapshots, default)
    campaign, by_seed, by_recipe, by_sr = Line(), defaultdict(Line), defaultdict(Line), defaultdict(Line)
    for a in attempts:
        recipe = a.recipe or "train"
        for line in (campaign, by_seed[a.seed], by_recipe[recipe], by_sr[(a.seed, recipe)]):
            line.add(a, now)
    idle, cluster = _idle(snapshots, attempts, run_ends, now)
    types = sorted({a.gpu_type for a in attempts})
    return CostReport(attempts, campaign, dict(by_seed), dict(by_recipe), dict(by_sr), idle, cluster, types)
