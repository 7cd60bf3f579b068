"""What a partly done eval already says: bpb with an interval, paired differences, stopping rules.

An eval's plan deals its batches to shards in a seeded random order (workers/plan.py), so the
batches done at any moment are a simple random sample, without replacement, of all N batches.
bpb = Σ y / Σ x over batches (y = Σ nll in bits, x = Σ bytes) is then estimated by the ratio
estimator R̂ = Σ y_s / Σ x_s over the sample, whose variance by the delta method is

    Var(R̂) ≈ (1 − n/N) · s²_e / (n · x̄²),   e_i = y_i − R̂ x_i,

with the finite-population correction (1 − n/N): at n = N the interval is a point, the number.

Two kinds of interval (docs/progress-cost.md "Early answers"):
- `fixed`: a 95 % interval valid at the moment you look once (what `pipeline status` shows);
- `sequence`: a confidence *sequence*, valid simultaneously at every moment, so a rule that is
  checked after every flush and stops the first time it holds still errs ≤ α. It is the
  normal-mixture boundary of the asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha,
  Kennedy and Ramdas (2021), tuned to be tightest around `t_opt` batches, times the same finite
  population correction. `tests/pipeline/progress/test_estimators.py` measures its error rate
  under continuous monitoring by simulation.

A TTT eval scores its chunks in val order: its done batches are a prefix, not a sample, so no
interval is given for it (`Estimate.sample` is False).

Below MIN_INTERVAL_BATCHES batches no interval is given at all: the delta method assumes R̂ is
nearly normal, and with few batches a handful of much harder ones make it skewed. Simulated with
0.5 % of batches 3× harder than the rest, the 95 % interval covered the truth in 26 % of runs at
40 of 400 batches (the hard ones mostly not drawn yet) and 88 % at 600 of 30,000; the minimum
is the one stop rules already use (`stop_when.min_batches`, default 30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
Z95 = 1.959963984540054
MIN_INTERVAL_BATCHES = 30  # fewer done batches: a value, no interval (the module's docstring says why)


@dataclass(frozen=True)
class Estimate:
    """bpb (or a bpb difference) from n of N batches."""

    value: float
    half_width: float | None  # None: no interval (a prefix, or too few batches to say)
    n: int
    N: int
    sample: bool = True  # False: the n batches are a prefix in val order (TTT), not a random sample

    @property
    def done(self) -> float:
        return self.n / self.N if self.N else 0.0

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.value - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.value + self.half_width

    def as_dict(self) -> dict:
        return {
            "value": self.value, "half_width": self.half_width, "low": self.low, "high": self.high,
            "batches_done": self.n, "batches": self.N, "sample": self.sample,
        }


@dataclass(frozen=True)
class Batches:
    """Per-batch sums of the batches done, in any order: Σ nll (nats) and Σ bytes."""

    nll: np.ndarray
    bytes: np.ndarray

    @classmethod
    def of(cls, records) -> Batches:
        recs = list(records)
        return cls(np.array([r.nll for r in recs], dtype=np.float64), np.array([r.bytes for r in recs], dtype=np.float64))

    def __len__(self) -> int:
        return int(self.nll.size)

    @property
    def bits(self) -> np.ndarray:
        return self.nll / LN2


def _fpc(n: int, N: int) -> float:
    return max(0.0, 1.0 - n / N) if N else 0.0


def _linearized(b: Batches) -> tuple[float, np.ndarray]:
    """R̂ and each batch's influence on it, e_i / x̄ (the delta method's linearization)."""
    y, x = b.bits, b.bytes
    r = float(y.sum() / x.sum())
    return r, (y - r * x) / x.mean()


def sequence_factor(n: int, alpha: float, t_opt: float) -> float:
    """The normal-mixture boundary divided by σ: the half-width of a confidence sequence for a
    mean of n values of standard deviation σ is σ · sequence_factor(n, ...)."""
    rho2 = (-2.0 * math.log(alpha) + math.log(-2.0 * math.log(alpha) + 1.0)) / t_opt
    return math.sqrt(2.0 * (n * rho2 + 1.0) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1.0) / alpha))


def _half_width(influence: np.ndarray, n: int, N: int, kind: str, alpha: float, t_opt: float | None) -> float | None:
    if N and n >= N:
        return 0.0  # every batch is in: the number itself
    if n < max(MIN_INTERVAL_BATCHES, 2):
        return None
    sd = float(influence.std(ddof=1))
    if kind == "fixed":
        z = Z95 if alpha == 0.05 else _z(alpha)
        return z * sd * math.sqrt(_fpc(n, N) / n)
    return sd * sequence_factor(n, alpha, t_opt or max(10.0, 0.1 * N)) * math.sqrt(_fpc(n, N))


def _z(alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def bpb_estimate(b: Batches, N: int, *, sample: bool = True, kind: str = "fixed", alpha: float = 0.05, t_opt: float | None = None) -> Estimate:
    """bpb from the batches done; an interval only for a random sample (not a TTT prefix)."""
    n = len(b)
    if n == 0:
        return Estimate(float("nan"), None, 0, N, sample)
    r, infl = _linearized(b)
    half = _half_width(infl, n, N, kind, alpha, t_opt) if sample else None
    return Estimate(r, half, n, N, sample)


def paired_estimate(a: Batches, b: Batches, N: int, *, kind: str = "fixed", alpha: float = 0.05, t_opt: float | None = None) -> Estimate:
    """bpb(a) − bpb(b) from batches both have done (the same batch indices, in the same order).
    Each batch's difference of influences carries what the two recipes share (a hard batch is
    hard for both), so the interval is far narrower than two separate ones combined."""
    n = len(a)
    if n != len(b):
        raise ValueError("paired batches must be the same batches")
    if n == 0:
        return Estimate(float("nan"), None, 0, N)
    ra, ia = _linearized(a)
    rb, ib = _linearized(b)
    return Estimate(ra - rb, _half_width(ia - ib, n, N, kind, alpha, t_opt), n, N)


def unpaired_half_width(a: Estimate, b: Estimate) -> float | None:
    """The half-width of bpb(a) − bpb(b) from two separate intervals (as if their batches were
    unrelated): what pairing is measured against."""
    if a.half_width is None or b.half_width is None:
        return None
    return math.hypot(a.half_width, b.half_width)
