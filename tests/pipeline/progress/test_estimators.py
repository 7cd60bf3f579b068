"""The running bpb's interval covers, the stopping rule errs at most α, pairing narrows."""

from __future__ import annotations

import math

import numpy as np

from pipeline.progress.estimators import Batches, bpb_estimate, paired_estimate, unpaired_half_width
from pipeline.progress.stopping import decide
from pipeline.spec import StopRule

LN2 = math.log(2)


def val_set(N: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-batch (nll nats, bytes) whose difficulty drifts along the val set, as the seeds' did
    (their running bpb over val order moved by ~0.01 between 20 % and 100 %), plus per-batch noise;
    and a second recipe on the same batches that is better by `shift` bpb, sharing the difficulty."""
    i = np.arange(N)
    nbytes = rng.uniform(6_000, 14_000, N)
    difficulty = 1.12 + 0.12 * np.sin(6 * np.pi * i / N) + 0.04 * i / N + rng.normal(0, 0.08, N)
    a = difficulty * nbytes * LN2
    b = (difficulty - shift + rng.normal(0, 0.004, N)) * nbytes * LN2
    return a, b, nbytes


def true_bpb(nll: np.ndarray, nbytes: np.ndarray) -> float:
    return float(nll.sum() / LN2 / nbytes.sum())


def test_interval_covers_at_ten_percent_done():
    rng = np.random.default_rng(1)
    N, hits, widths = 2000, 0, []
    for _ in range(200):
        nll, _, x = val_set(N, rng)
        done = rng.permutation(N)[: N // 10]  # the plan's seeded order: a random sample
        e = bpb_estimate(Batches(nll[done], x[done]), N)
        hits += e.low <= true_bpb(nll, x) <= e.high
        widths.append(e.half_width)
    assert hits / 200 >= 0.90, hits
    # a prefix in val order (what a TTT eval has) would miss most of the time: why it gets no interval
    e = bpb_estimate(Batches(nll[: N // 10], x[: N // 10]), N, sample=False)
    assert e.half_width is None and not e.sample


def test_finished_eval_has_no_width():
    rng = np.random.default_rng(2)
    nll, _, x = val_set(500, rng)
    e = bpb_estimate(Batches(nll, x), 500)
    assert e.half_width == 0.0 and math.isclose(e.value, true_bpb(nll, x), rel_tol=1e-14)


def looks(N: int, every: int = 10):
    return range(every, N + 1, every)


def test_half_width_rule_under_continuous_monitoring_errs_at_most_alpha():
    """Looked at after every 10 batches, stopped the first time the half-width is small enough:
    the interval it stops with misses the true bpb at most 5 % of the time."""
    rng = np.random.default_rng(3)
    N, runs, wrong, stopped = 1500, 200, 0, 0
    rule = StopRule(half_width=0.004)
    for _ in range(runs):
        nll, _, x = val_set(N, rng)
        order = rng.permutation(N)
        truth = true_bpb(nll, x)
        for n in looks(N):
            d = decide(rule, Batches(nll[order[:n]], x[order[:n]]), N)
            if d.stop:
                stopped += 1
                wrong += not (d.estimate.low <= truth <= d.estimate.high)
                break
    assert stopped >= runs * 0.9  # the rule does stop early, before the end
    assert wrong / runs <= 0.05, wrong


def test_worse_than_rule_rarely_calls_the_better_recipe_worse():
    """A recipe that is in truth *better* (by 0.0005 bpb) is watched after every 10 batches for a
    sign that it is worse: it must be called worse at most 5 % of the time; a clearly worse one is
    called worse early."""
    rng = np.random.default_rng(4)
    N, runs = 1500, 200
    rule = StopRule(worse_than="other")
    wrong = 0
    for _ in range(runs):
        base, better, x = val_set(N, rng, shift=0.0005)
        order = rng.permutation(N)
        for n in looks(N):
            own, ref = Batches(better[order[:n]], x[order[:n]]), Batches(base[order[:n]], x[order[:n]])
            if decide(rule, own, N, (own, ref)).stop:
                wrong += 1
                break
    assert wrong / runs <= 0.05, wrong
    base, worse, x = val_set(N, rng, shift=-0.01)
    order = rng.permutation(N)
    pairs = ((n, Batches(worse[order[:n]], x[order[:n]]), Batches(base[order[:n]], x[order[:n]])) for n in looks(N))
    at = next(n for n, own, ref in pairs if decide(rule, own, N, (own, ref)).stop)
    assert at < N // 2


def test_pairing_is_far_narrower_than_two_intervals():
    rng = np.random.default_rng(5)
    N = 2000
    a, b, x = val_set(N, rng, shift=0.002)
    done = rng.permutation(N)[: N // 10]
    ba, bb = Batches(a[done], x[done]), Batches(b[done], x[done])
    d = paired_estimate(ba, bb, N)
    un = unpaired_half_width(bpb_estimate(ba, N), bpb_estimate(bb, N))
    assert d.low <= true_bpb(a, x) - true_bpb(b, x) <= d.high
    assert un / d.half_width > 5


def test_no_interval_below_the_minimum_where_a_few_hard_batches_break_it():
    """0.5 % of batches 3× harder than the rest: at 20 of 400 batches done most samples hold none
    of the hard ones and the delta-method interval misses the truth far more than 5 % of the time;
    so below MIN_INTERVAL_BATCHES there is a value and no interval."""
    from pipeline.progress.estimators import MIN_INTERVAL_BATCHES

    rng = np.random.default_rng(7)
    N = 400
    x = rng.uniform(900, 1100, N)
    nll = x * LN2 * rng.normal(1.2, 0.02, N)
    nll[rng.choice(N, 2, replace=False)] *= 3.0
    truth, hits = true_bpb(nll, x), 0
    for _ in range(300):
        done = rng.permutation(N)[:MIN_INTERVAL_BATCHES - 10]
        hw = bpb_estimate(Batches(nll[done], x[done]), N, kind="fixed")
        assert hw.half_width is None and hw.value == hw.value  # a value, no interval
        # what the interval would have said (the formula at the same n): how often it misses
        r = nll[done].sum() / LN2 / x[done].sum()
        infl = (nll[done] / LN2 - r * x[done]) / x[done].mean()
        half = 1.96 * infl.std(ddof=1) * math.sqrt((1 - len(done) / N) / len(done))
        hits += r - half <= truth <= r + half
    assert hits / 300 < 0.9, hits  # the undercoverage the minimum hides
    done = rng.permutation(N)[:MIN_INTERVAL_BATCHES]
    assert bpb_estimate(Batches(nll[done], x[done]), N).half_width is not None
    assert paired_estimate(Batches(nll[:5], x[:5]), Batches(nll[:5] * 1.01, x[:5]), N).half_width is None
