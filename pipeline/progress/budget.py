"""The driver's budget policy: start no unit once $ spent + $ projected to finish would pass
`budget_usd` (README "Budget"). What finished stays valid; a re-run with a larger budget goes on.

The projection is per unit, from what this campaign has measured: an eval shard costs its batches
× the GPU-seconds per batch its recipe has taken so far (any seed); a training costs what earlier
trainings took, or `train.max_wallclock_s` on its GPUs before any has finished. Units with nothing
to go on yet (a recipe no batch of which has finished) are counted and named, not guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Projection:
    spent_usd: float
    to_finish_usd: float
    unprojected: int  # units with no measured rate yet

    @property
    def total_usd(self) -> float:
        return self.spent_usd + self.to_finish_usd

    def describe(self) -> str:
        more = f" (+ {self.unprojected} unit(s) not yet measured)" if self.unprojected else ""
        return f"${self.spent_usd:.2f} spent + ${self.to_finish_usd:.2f} to finish{more}"


@dataclass
class Rates:
    """GPU-seconds per batch of each recipe, and per training, from finished attempts."""

    eval_gpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    eval_batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    train_gpu_s: list[float] = field(default_factory=list)

    def observe(self, kind: str, recipe: str, gpu_s: float, batches: int | None) -> None:
        if kind == "train":
            self.train_gpu_s.append(gpu_s)
        elif batches:
            self.eval_gpu_s[recipe] += gpu_s
            self.eval_batches[recipe] += batches

    def per_batch(self, recipe: str) -> float | None:
        n = self.eval_batches.get(recipe, 0)
        return self.eval_gpu_s[recipe] / n if n else None

    def train(self, default_gpu_s: float) -> float:
        return sum(self.train_gpu_s) / len(self.train_gpu_s) if self.train_gpu_s else default_gpu_s


@dataclass(frozen=True)
class Work:
    """A unit not finished yet, as the projection sees it."""

    kind: str
    recipe: str
    gpus: float
    batches: int | None  # an eval shard's batches in the plan
    elapsed_s: float = 0.0  # running for this long


class Budget:
    def __init__(self, limit_usd: float | None, log: Callable[[str], None]):
        self.limit_usd, self.log = limit_usd, log
        self.stopped: str | None = None  # why new units stopped, once they have

    @staticmethod
    def project(spent_usd: float, work: list[Work], rates: Rates, usd_per_gpu_s: float, train_default_gpu_s: float) -> Projection:
        to_finish, unknown = 0.0, 0
        for w in work:
            if w.kind == "train":
                need = rates.train(train_default_gpu_s)
            else:
                per = rates.per_batch(w.recipe)
                if per is None or w.batches is None:
                    unknown += 1
                    continue
                need = per * w.batches
            to_finish += max(0.0, need - w.elapsed_s * w.gpus) * usd_per_gpu_s
        return Projection(spent_usd, to_finish, unknown)

    def allows(self, p: Projection) -> bool:
        if self.limit_usd is None:
            return True
        if p.total_usd <= self.limit_usd:
            return True
        if self.stopped is None:
            self.stopped = f"budget ${self.limit_usd:.2f}: {p.describe()} would pass it; starting no more units"
            self.log(self.stopped)
        return False
