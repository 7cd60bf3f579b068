import numpy as np
import pytest

from workers.windows import batch_index, make_windows, num_batches

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
    bs = 5
    for b in range(num_batches(len(w), bs)):
        bi = batch_index(val, w, b, bs)
        expect_t, expect_p = [], []
        for r, i in enumerate(range(b * bs, min((b + 1) * bs, len(w)))):
            s, n, lo = w.starts[i], w.lens[i], w.score_lo[i]
            assert (bi.x[r, :n] == val[s : s + n]).all() and (bi.x[r, n:] == 0).all()
            expect_t += list(val[s + lo + 1 : s + n + 1])
            expect_p += list(val[s + lo : s + n])
        assert bi.targets.tolist() == expect_t and bi.prev.tolist() == expect_p
    with pytest.raises(IndexError):
        batch_index(val, w, num_batches(len(w), bs), bs)
