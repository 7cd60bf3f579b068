"""The report's statistics reproduce the records' published figures and scipy's t-tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.report.stats import one_sample_less, spread, t_cdf, test_less, welch_less

SEEDS_001 = [1.148530, 1.144866, 1.146173]  # PR #1456's SLOT-100, published as 1.146523 ± 0.001516
RERUN_32 = [1.142050, 1.139991, 1.139924]  # the next record's re-run at 32 %


def test_the_records_mean_and_std_are_reproduced_at_ddof_0():
    s = spread(SEEDS_001)
    assert round(s.mean, 6) == 1.146523
    assert round(s.std_ddof0, 6) == 0.001516  # what the record published
    assert s.std_ddof1 == pytest.approx(np.std(SEEDS_001, ddof=1), rel=1e-12)
    assert round(spread(RERUN_32).std_ddof0, 6) == 0.000987 and spread([1.0]).std_ddof1 is None


@pytest.mark.parametrize("ours, base", [
    (RERUN_32, SEEDS_001),
    (SEEDS_001, RERUN_32),  # worse than the baseline: p near 1
    ([1.2, 1.21, 1.19, 1.205], [1.2, 1.3]),
    ([2.0, 2.0001], [2.1, 2.2, 2.15, 2.3, 2.0]),
])
def test_welch_one_sided_p_value_is_scipys(ours, base):
    want = scipy_stats.ttest_ind(ours, base, equal_var=False, alternative="less")
    got = welch_less(ours, base)
    assert got.t == pytest.approx(want.statistic, rel=1e-10)
    assert got.df == pytest.approx(want.df, rel=1e-10)
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-9, abs=1e-14)
    assert got.delta == pytest.approx(np.mean(ours) - np.mean(base), abs=1e-15)


def test_one_number_baseline_is_a_one_sample_test_as_scipy():
    want = scipy_stats.ttest_1samp(RERUN_32, 1.146523, alternative="less")
    got = test_less(RERUN_32, [1.146523])
    assert got.kind == "one-sample" and got.p_value == pytest.approx(want.pvalue, rel=1e-9)
    assert one_sample_less([1.1], 1.2).p_value is None  # one seed: no test, and it says why
    assert welch_less([1.1], SEEDS_001).note == "needs at least 2 seeds on each side"


@pytest.mark.parametrize("df", [1.0, 2.2, 5.0, 30.0, 300.0])
def test_t_cdf_is_scipys(df):
    for t in (-40.0, -3.1, -0.2, 0.0, 0.7, 2.5, 12.0):
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-15)
    assert t_cdf(-math.inf, df) == 0.0
