"""Cost and progress over time, from the ledger and the segments' flush times (README "Reports").

$ at time t: every attempt's GPUs × its price, over the part of its run before t (the attempts of
`pipeline/progress/cost.py`, priced there). Progress at t: eval batches whose segments were
flushed by t, over all batches the campaign's evals plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.progress.cost import AttemptCost

POINTS = 200


@dataclass(frozen=True)
class Timeline:
    start: float  # unix time of the first attempt
    t_s: np.ndarray  # seconds since start
    usd: np.ndarray  # cumulative $ (useful and lost; idle is not per-time in the ledger)
    priced: bool  # False: no attempt in the ledger (evals run by hand), so no cost
    eval_done: np.ndarray  # share of all planned eval batches done
    trains: list[tuple[int, float, float]]  # (seed, start s, end s) of each training attempt

    def as_dict(self) -> dict:
        return {
            "start": self.start, "t_s": self.t_s.tolist(), "usd": self.usd.tolist(), "priced": self.priced, "eval_done": self.eval_done.tolist(),
            "trains": [list(t) for t in self.trains],
        }


def timeline(attempts: list[AttemptCost], flushes: list[tuple[float, int]], total_batches: int, now: float) -> Timeline | None:
    """`flushes`: (time, batches) of every segment of the campaign's evals."""
    if not attempts and not flushes:
        return None
    # `pipeline eval` by hand writes segments but no ledger attempts: progress without cost
    start = min([a.start for a in attempts] + [t for t, _ in flushes])
    end = max([a.end if a.end is not None else now for a in attempts] + [t for t, _ in flushes])
    grid = np.linspace(start, max(end, start + 1.0), POINTS)
    usd = np.zeros(POINTS)
    for a in attempts:
        a_end = a.end if a.end is not None else now
        usd += np.clip(grid - a.start, 0.0, max(0.0, a_end - a.start)) * a.gpus * a.usd_per_gpu_hour / 3600.0
    done = np.zeros(POINTS)
    if flushes and total_batches:
        times = np.array([t for t, _ in flushes])
        counts = np.array([n for _, n in flushes], dtype=np.float64)
        order = np.argsort(times)
        cum = np.cumsum(counts[order])
        idx = np.searchsorted(times[order], grid, side="right")
        done = np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0.0) / total_batches
    trains = [(a.seed, a.start - start, (a.end if a.end is not None else now) - start) for a in attempts if a.recipe is None]
    return Timeline(start, grid - start, usd, bool(attempts), np.minimum(done, 1.0), trains)
