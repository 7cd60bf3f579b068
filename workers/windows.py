"""Sliding-window geometry of design §5, vectorized (no Python loop per window).

With T = val tokens − 1 targets, window starts are s = 0, stride, 2·stride, … < T; a window covers
targets [s, min(s + seq_len, T)) and scores the relative positions [score_lo, len).

- legacy (the seeds' SLOT records): keep windows with len ≥ stride or s = 0; window 0 scores all of
  its positions, the others their last `stride`, so tail windows score the final targets again.
- exact (later records): keep s = 0 and windows with s + seq_len − stride < T; the others score
  [seq_len − stride, len), so every target is scored exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Windows:
    starts: np.ndarray  # int64 [N] first target (= first input token) of each window
    lens: np.ndarray  # int64 [N] targets covered
    score_lo: np.ndarray  # int64 [N] first scored relative position; the last scored is lens − 1
    seq_len: int

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def scored_targets(self) -> int:
        return int((self.lens - self.score_lo).sum())


def make_windows(total_targets: int, seq_len: int, stride: int, window_filter: str) -> Windows:
    T = int(total_targets)
    if T < 1:
        raise ValueError("need at least 2 val tokens (1 target)")
    starts = np.arange(0, T, stride, dtype=np.int64)
    lens = np.minimum(starts + seq_len, T) - starts
    if window_filter == "legacy":
        keep = (lens >= stride) | (starts == 0)
        starts, lens = starts[keep], lens[keep]
        score_lo = np.maximum(lens - stride, 0)
    elif window_filter == "exact":
        keep = (starts == 0) | (starts + seq_len - stride < T)
        starts, lens = starts[keep], lens[keep]
        score_lo = np.full_like(starts, seq_len - stride)
    else:
        raise ValueError(f"unknown window_filter {window_filter!r}")
    score_lo[starts == 0] = 0
    return Windows(starts, lens, score_lo, seq_len)


def num_batches(n_windows: int, batch_seqs: int) -> int:
    return -(-n_windows // batch_seqs)


@dataclass(frozen=True)
class BatchIndex:
    """Token inputs of one batch and the flat list of its scored positions."""

    x: np.ndarray  # int64 [B, L] input tokens (zero-padded past each window's end)
    rows: np.ndarray  # int64 [K] batch row of each scored position
    cols: np.ndarray  # int64 [K] position within the row
    targets: np.ndarray  # int64 [K] target token ids
    prev: np.ndarray  # int64 [K] token before each target (for the leading-space byte)


def batch_index(val: np.ndarray, w: Windows, batch: int, batch_seqs: int) -> BatchIndex:
    lo, hi = batch * batch_seqs, min((batch + 1) * batch_seqs, len(w))
    if lo >= hi:
        raise IndexError(f"batch {batch} is out of range")
    starts, lens, score_lo = w.starts[lo:hi], w.lens[lo:hi], w.score_lo[lo:hi]
    L = int(lens.max())
    pos = np.arange(L, dtype=np.int64)
    absolute = starts[:, None] + pos[None, :]  # index of the input token; its target is +1
    valid = pos[None, :] < lens[:, None]
    x = np.where(valid, val[np.minimum(absolute, val.size - 1)], 0)
    scored = (pos[None, :] >= score_lo[:, None]) & valid
    rows, cols = np.nonzero(scored)
    at = absolute[rows, cols]
    return BatchIndex(x, rows, cols, val[at + 1], val[at])
