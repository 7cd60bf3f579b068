"""Two recipes compared batch by batch (docs/progress-cost.md "Paired comparisons").

Recipes that score the same batches of one seed share their plan's order (workers/plan.py), so the
batches both have done are the same random sample, and bpb(A) − bpb(B) is estimated from each
batch's difference: what makes a batch hard for A makes it hard for B, and cancels. The unpaired
interval (two separate intervals combined) is printed beside it, which is what pairing saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.progress.estimators import Batches, Estimate, bpb_estimate, paired_estimate, unpaired_half_width
from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store


@dataclass(frozen=True)
class SeedComparison:
    seed: int
    a: Estimate
    b: Estimate
    diff: Estimate  # bpb(a) − bpb(b), paired
    unpaired_half_width: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "a": self.a.as_dict(), "b": self.b.as_dict(), "difference": self.diff.as_dict(),
            "unpaired_half_width": self.unpaired_half_width,
        }


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    at: float | None  # the share of each shard's batches looked at (None: all the store holds)
    seeds: list[SeedComparison]

    @property
    def mean_diff(self) -> float | None:
        return sum(s.diff.value for s in self.seeds) / len(self.seeds) if self.seeds else None

    @property
    def mean_half_width(self) -> float | None:
        """Of the mean over seeds, from the seeds' sampling intervals (these seeds' numbers, not
        a new seed's)."""
        hws = [s.diff.half_width for s in self.seeds]
        if not hws or any(h is None for h in hws):
            return None
        return math.sqrt(sum(h * h for h in hws)) / len(hws)

    @property
    def mean_unpaired_half_width(self) -> float | None:
        hws = [s.unpaired_half_width for s in self.seeds]
        if not hws or any(h is None for h in hws):
            return None
        return math.sqrt(sum(h * h for h in hws)) / len(hws)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "a": self.a, "b": self.b, "at": self.at, "seeds": [s.as_dict() for s in self.seeds],
            "mean_difference": self.mean_diff, "mean_half_width": self.mean_half_width,
            "mean_unpaired_half_width": self.mean_unpaired_half_width,
        }


def _sample(plan: dict, at: float | None) -> list[int] | None:
    """The batches every shard would have done at `at` of its list (all shards running alike)."""
    if at is None:
        return None
    out: list[int] = []
    for part in plan["shards"]:
        out += part[: max(0, math.ceil(at * len(part)))]
    return out


def compare(spec: CampaignSpec, store: Store, a: str, b: str, at: float | None = None) -> Comparison:
    from workers.segments import load_progress  # json only

    ra, rb = spec.eval_recipe(a), spec.eval_recipe(b)
    if ra.geometry() != rb.geometry():
        raise ValueError(f"{a} and {b} do not score the same batches (windows or batch layout differ): nothing to pair")
    if not (ra.shardable and rb.shardable):
        raise ValueError(f"{a if not ra.shardable else b}: a ttt recipe's running number is a prefix; compare finished evals only")
    layout = Layout(spec.name)
    seeds = []
    for seed in spec.seeds:
        if not (store.exists(layout.plan(seed, a)) and store.exists(layout.plan(seed, b))):
            continue
        plan = store.get_json(layout.plan(seed, a))
        N = plan["batches"]
        pa = load_progress(store, layout.eval_dir(seed, a)).records
        pb = load_progress(store, layout.eval_dir(seed, b)).records
        look = _sample(plan, at)
        both = sorted(set(pa) & set(pb) & (set(look) if look is not None else set(pa)))
        if len(both) < 2:
            continue
        ba, bb = Batches.of(pa[i] for i in both), Batches.of(pb[i] for i in both)
        ea, eb = bpb_estimate(ba, N), bpb_estimate(bb, N)
        seeds.append(SeedComparison(seed, ea, eb, paired_estimate(ba, bb, N), unpaired_half_width(ea, eb)))
    return Comparison(a, b, at, seeds)
