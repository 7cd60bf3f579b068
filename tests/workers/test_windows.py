import numpy as np
import pytest

from workers.windows import batch_index, chunk_of_windows, make_windows, plan_batches

STANDARD_VAL_TARGETS = 62_021_632


@pytest.mark.parametrize(
    "seq_len, filt, expected",
    [(1024, "legacy", 969_088), (1024, "exact", 969_073), (2048, "exact", 969_057)],
)
def test_published_window_counts(seq_len, filt, expected):
    assert len(make_windows(STANDARD_VAL_TARGETS, seq_len, 64, filt)) == expected


@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 1000, 1023, 4097])
@pytest.mark.parametrize("seq_len, stride", [(64, 16), (64, 64), (32, 7)])
def test_exact_scores_every_target_once(T, seq_len, stride):
    w = make_windows(T, seq_len, stride, "exact")
    counts = np.zeros(T, dtype=int)
    for s, n, lo in zip(w.starts, w.lens, w.score_lo):
        assert 0 <= lo < n <= seq_len
        counts[s + lo : s + n] += 1
    assert (counts == 1).all()
    assert w.scored_targets == T


def test_legacy_rescored_tail():
    T, seq_len, stride = 1000, 64, 16
    w = make_windows(T, seq_len, stride, "legacy")
    counts = np.zeros(T, dtype=int)
    for s, n, lo in zip(w.starts, w.lens, w.score_lo):
        assert n >= stride or s == 0
        counts[s + lo : s + n] += 1
    assert (counts >= 1).all() and counts.max() > 1  # tail windows score final targets again
    assert (w.score_lo[1:] == w.lens[1:] - stride).all() and w.score_lo[0] == 0


def test_batch_index_matches_a_loop():
    rng = np.random.default_rng(0)
    val = rng.integers(0, 50, size=300)
    w = make_windows(val.size - 1, 32, 8, "legacy")
    bounds = plan_batches(w, 5)
    assert bounds[0] == 0 and bounds[-1] == len(w) and (np.diff(bounds) <= 5).all()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        bi = batch_index(val, w, lo, hi)
        expect_t, expect_p = [], []
        for r, i in enumerate(range(lo, hi)):
            s, n, slo = w.starts[i], w.lens[i], w.score_lo[i]
            assert (bi.x[r, :n] == val[s : s + n]).all() and (bi.x[r, n:] == 0).all()
            expect_t += list(val[s + slo + 1 : s + n + 1])
            expect_p += list(val[s + slo : s + n])
            assert bi.all_targets[bi.all_rows == r].tolist() == list(val[s + 1 : s + n + 1])
        assert bi.targets.tolist() == expect_t and bi.prev.tolist() == expect_p
    with pytest.raises(IndexError):
        batch_index(val, w, len(w), len(w) + 1)


def test_chunked_batches_never_cross_a_chunk():
    w = make_windows(5000, 64, 16, "exact")
    bounds = plan_batches(w, 7, chunk_tokens=1000)
    chunk = chunk_of_windows(w, 1000)
    assert (np.diff(chunk) >= 0).all()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert 0 < hi - lo <= 7 and chunk[lo] == chunk[hi - 1]
    assert sorted(set(chunk[bounds[:-1]].tolist())) == list(range(5))


def test_all_filter_keeps_every_start_and_tail_windows_score_what_they_hold():
    """PRs #1176/#1722: every start s < T; s > 0 scores relative [max(wlen − stride, 0), wlen)."""
    T, seq, stride = 1000, 64, 16
    w = make_windows(T, seq, stride, "all")
    expect = []
    for s in range(0, T, stride):
        wlen = min(s + seq, T) - s
        expect.append((s, wlen, 0 if s == 0 else max(wlen - stride, 0)))
    assert list(zip(w.starts.tolist(), w.lens.tolist(), w.score_lo.tolist())) == expect
    assert w.lens.min() >= 1 and len(w) == len(range(0, T, stride))


def test_rank_split_batches_each_part_from_its_start():
    w = make_windows(1000, 64, 16, "all")
    n, k, bs = len(w), 3, 8
    expect = []
    for r in range(k):  # as a record on k GPUs cuts the windows: [n·r // k, n·(r + 1) // k)
        lo, hi = n * r // k, n * (r + 1) // k
        expect += list(range(lo, hi, bs))
    assert plan_batches(w, bs, rank_split=k).tolist() == expect + [n]
    assert plan_batches(w, bs, rank_split=1).tolist() == plan_batches(w, bs).tolist()
