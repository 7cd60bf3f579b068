"""Running bpb against the share of val scored in val order: the seeds' trajectory table
("@28% → 1.142572, @32% → 1.140655, ...") computed from the per-batch records.

Batch b holds windows [bounds[b], bounds[b + 1]) in val order (workers/windows.py), so the running
value after batch k is Σ nll / ln 2 / Σ bytes over batches 0..k. Only the prefix of batches that
are all scored has a value: a sharded eval that is not finished has a random sample, not a prefix,
and its curve stops where the first missing batch is (its interval is in the report instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.progress.estimators import LN2
from pipeline.spec import CampaignSpec, EvalRecipe

SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the rows of the trajectory table


@dataclass(frozen=True)
class Trajectory:
    seed: int
    share: np.ndarray  # after each batch of the scored prefix: share of the basis done, (0, 1]
    bpb: np.ndarray  # running bpb at that point
    basis: str  # "windows" (from the recipe's geometry), "scored tokens" or "batches"
    complete: bool

    def at(self, share: float) -> float | None:
        """Running bpb at the first batch that reaches `share`; None if the prefix stops before."""
        i = int(np.searchsorted(self.share, share - 1e-12))
        return float(self.bpb[i]) if i < self.share.size else None

    def as_dict(self) -> dict:
        return {
            "seed": self.seed, "basis": self.basis, "complete": self.complete,
            "points": [[float(s), float(b)] for s, b in zip(self.share, self.bpb)],
        }


def windows_per_batch(spec: CampaignSpec, recipe: EvalRecipe, batches: int) -> np.ndarray | None:
    """Each batch's window count, from the recipe's geometry over the val shards' headers; None
    where the data is not here (a report made from a copy of the store)."""
    from workers.data import count_val_tokens
    from workers.plan import recipe_batches, val_length

    try:
        _, bounds = recipe_batches(val_length(count_val_tokens(spec.data.shards, spec.data.val_tokens), recipe), recipe)
    except (OSError, ValueError):
        return None
    counts = np.diff(bounds)
    return counts if counts.size == batches else None


def trajectory(seed: int, records: dict, batches: int, windows: np.ndarray | None) -> Trajectory:
    """`records`: batch → Record (nll, tokens, bytes) of the batches done."""
    k = 0
    while k < batches and k in records:
        k += 1
    recs = [records[b] for b in range(k)]
    nll = np.cumsum([r.nll for r in recs], dtype=np.float64)
    nbytes = np.cumsum([r.bytes for r in recs], dtype=np.float64)
    bpb = nll / LN2 / np.maximum(nbytes, 1.0)
    complete = k == batches and batches > 0
    if windows is not None:
        share, basis = np.cumsum(windows[:k]) / windows.sum(), "windows"
    elif complete:
        tokens = np.cumsum([r.tokens for r in recs], dtype=np.float64)
        share, basis = tokens / tokens[-1], "scored tokens"
    else:
        share, basis = np.arange(1, k + 1, dtype=np.float64) / batches, "batches"
    return Trajectory(seed, share, bpb, basis, complete)
