"""Multi-seed statistics of a report: mean, std at both ddofs, and a one-sided t-test against a baseline.

The records publish std with ddof = 0 (the population formula: 1.148530, 1.144866, 1.146173 →
0.001516); `statistics.stdev` and our summary.json use ddof = 1. A report gives both, each labelled.

The test asks whether this recipe's per-seed val_bpb is lower than the baseline's (lower is better):
Welch's t-test (unequal variances, Welch–Satterthwaite degrees of freedom) when the baseline has
per-seed values, a one-sample t-test when it is a single number. The t distribution's CDF is the
regularized incomplete beta function, evaluated here by its continued fraction (Numerical Recipes
§6.4), so the control plane needs no scipy; the tests check it against scipy's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float | None
    std_ddof0: float | None  # as the records publish it
    std_ddof1: float | None  # the sample std (summary.json)

    def as_dict(self) -> dict:
        return asdict(self)


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if n == 0:
        return Spread(0, None, None, None)
    mean = math.fsum(values) / n
    ss = math.fsum((v - mean) ** 2 for v in values)
    return Spread(n, mean, math.sqrt(ss / n), math.sqrt(ss / (n - 1)) if n > 1 else None)


@dataclass(frozen=True)
class TTest:
    kind: str  # "welch" | "one-sample"
    delta: float | None  # mean(ours) − mean(baseline); None without values
    t: float | None
    df: float | None
    p_value: float | None  # one-sided: P(a t this low | ours is not better); None: not computable
    n: int
    n_baseline: int
    note: str = ""  # why there is no p-value

    def as_dict(self) -> dict:
        return {**asdict(self), "alternative": "ours < baseline (lower val_bpb)"}


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t < 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t < 0 else 1.0 - tail


def welch_less(ours: Sequence[float], baseline: Sequence[float]) -> TTest:
    """Welch's one-sided test of mean(ours) < mean(baseline)."""
    a, b = spread(ours), spread(baseline)
    if a.n == 0 or b.n == 0:
        return TTest("welch", None, None, None, None, a.n, b.n, "no finished seed")
    delta = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return TTest("welch", delta, None, None, None, a.n, b.n, "needs at least 2 seeds on each side")
    va, vb = a.std_ddof1**2 / a.n, b.std_ddof1**2 / b.n
    if va + vb == 0.0:
        return TTest("welch", delta, None, None, None, a.n, b.n, "no spread on either side")
    t = delta / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return TTest("welch", delta, t, df, t_cdf(t, df), a.n, b.n)


def one_sample_less(ours: Sequence[float], mu: float) -> TTest:
    """One-sided test of mean(ours) < mu (a baseline known by one number)."""
    a = spread(ours)
    if a.n == 0:
        return TTest("one-sample", None, None, None, None, 0, 1, "no finished seed")
    delta = a.mean - mu
    if a.n < 2:
        return TTest("one-sample", delta, None, None, None, a.n, 1, "needs at least 2 seeds")
    if a.std_ddof1 == 0.0:
        return TTest("one-sample", delta, None, None, None, a.n, 1, "no spread")
    t = delta / (a.std_ddof1 / math.sqrt(a.n))
    return TTest("one-sample", delta, t, a.n - 1.0, t_cdf(t, a.n - 1.0), a.n, 1)


def test_less(ours: Sequence[float], baseline: Sequence[float]) -> TTest:
    """Welch against per-seed values, one-sample against one number."""
    return one_sample_less(ours, baseline[0]) if len(baseline) == 1 else welch_less(ours, baseline)


test_less.__test__ = False  # pytest: a function, not a test


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, eps: float = 1e-15, tiny: float = 1e-300, max_iter: int = 500) -> float:
    """Continued fraction of the incomplete beta function, modified Lentz's method."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
