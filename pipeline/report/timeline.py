"""Cost and progress over time, from the ledger and the segments' flush times (docs/reports.md "Reports").

$ at time t: the campaign's bill as it stood at t (`pipeline/progress/cost.py`: every watched
node's time at its price, idle included, and the attempts no driver watched), ending at the total
`pipeline cost` prints. Progress at t: eval batches whose segments were
flushed by t, over all batches the campaign's evals plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.progress.cost import CostReport

POINTS = 200


@dataclass(frozen=True)
class Timeline:
    start: float  # unix time of the first attempt
    t_s: np.ndarray  # seconds since start
    usd: np.ndarray  # the cumulative bill
    priced: bool  # False: nothing billed in the ledger (evals run by hand), so no cost
    eval_done: np.ndarray  # share of all planned eval batches done
    trains: list[tuple[int, float, float]]  # (seed, start s, end s) of each training attempt

    def as_dict(self) -> dict:
        return {
            "start": self.start, "t_s": self.t_s.tolist(), "usd": self.usd.tolist(), "priced": self.priced, "eval_done": self.eval_done.tolist(),
            "trains": [list(t) for t in self.trains],
        }


def timeline(cost: CostReport, flushes: list[tuple[float, int]], total_batches: int, now: float) -> Timeline | None:
    """`flushes`: (time, batches) of every segment of the campaign's evals."""
    attempts = cost.attempts
    if not attempts and not flushes and not cost.pieces:
        return None
    # `pipeline eval` by hand writes segments but no ledger attempts: progress without cost
    start = min([a.start for a in attempts] + [t for t, _ in flushes] + [p[0] for p in cost.pieces])
    end = max([a.end if a.end is not None else now for a in attempts] + [t for t, _ in flushes] + [p[1] for p in cost.pieces])
    grid = np.linspace(start, max(end, start + 1.0), POINTS)
    usd = cost.usd_at(grid)
    done = np.zeros(POINTS)
    if flushes and total_batches:
        times = np.array([t for t, _ in flushes])
        counts = np.array([n for _, n in flushes], dtype=np.float64)
        order = np.argsort(times)
        cum = np.cumsum(counts[order])
        idx = np.searchsorted(times[order], grid, side="right")
        done = np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0.0) / total_batches
    trains = [(a.seed, a.start - start, (a.end if a.end is not None else now) - start) for a in attempts if a.recipe is None]
    return Timeline(start, grid - start, usd, bool(cost.pieces), np.minimum(done, 1.0), trains)
