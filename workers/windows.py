"""Sliding-window geometry of docs/design.md §5, vectorized (no Python loop per window).

With T = val tokens − 1 targets, window starts are s = 0, stride, 2·stride, … < T; a window covers
targets [s, min(s + seq_len, T)) and scores the relative positions [score_lo, len).

- legacy (the seeds' SLOT records): keep windows with len ≥ stride or s = 0; window 0 scores all of
  its positions, the others their last `stride`, so tail windows score the final targets again.
- exact (later records): keep s = 0 and windows with s + seq_len − stride < T; the others score
  [seq_len − stride, len), so every target is scored exactly once.
- all (PRs #1176, #1722): every start s < T (len ≥ 1); windows s > 0 score [max(len − stride, 0),
  len), so a short tail window scores all it holds.

Batches are `batch_seqs` consecutive windows; with `rank_split: k` the windows are first cut into k
contiguous parts (as a record running on k GPUs cuts them) and each part is batched from its start.
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
    if window_filter in ("legacy", "all"):
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


def chunk_of_windows(w: Windows, chunk_tokens: int) -> np.ndarray:
    """Score-first TTT: a window belongs to the chunk holding its first scored target. Windows are
    in start order and first scored targets never decrease, so each chunk is a contiguous run."""
    return (w.starts + w.score_lo) // chunk_tokens


def plan_batches(w: Windows, batch_seqs: int, chunk_tokens: int | None = None, rank_split: int = 1) -> np.ndarray:
    """Batch boundaries as window indices: batch b is windows [bounds[b], bounds[b + 1]). Batches are
    `batch_seqs` consecutive windows of a part: with chunks (TTT) the parts are the chunks, since the
    model changes between chunks; otherwise the `rank_split` parts [n·r // k, n·(r + 1) // k)."""
    n = len(w)
    if chunk_tokens is None:
        firsts = np.unique(np.arange(rank_split, dtype=np.int64) * n // rank_split)
    else:
        chunk = chunk_of_windows(w, chunk_tokens)
        firsts = np.flatnonzero(np.diff(chunk, prepend=-1))  # first window of each chunk
    ends = np.append(firsts[1:], n)
    starts = [np.arange(a, b, batch_seqs, dtype=np.int64) for a, b in zip(firsts, ends)]
    return np.append(np.concatenate(starts), n)


@dataclass(frozen=True)
class BatchIndex:
    """Token inputs of one batch, its scored positions and (for loss over all positions) every
    valid position, each as flat (row, col) lists."""

    x: np.ndarray  # int64 [B, L] input tokens (zero-padded past each window's end)
    rows: np.ndarray  # int64 [K] batch row of each scored position
    cols: np.ndarray  # int64 [K] position within the row
    targets: np.ndarray  # int64 [K] target token ids
    prev: np.ndarray  # int64 [K] token before each target (for the leading-space byte)
    all_rows: np.ndarray  # int64 [M] every valid position (scored or context)
    all_cols: np.ndarray
    all_targets: np.ndarray
    target_at: np.ndarray  # int64 [K] index in val of each scored target
    all_target_at: np.ndarray  # int64 [M] index in val of each valid position's target


def batch_index(val: np.ndarray, w: Windows, lo: int, hi: int, width: int | None = None) -> BatchIndex:
    """Inputs and positions of windows [lo, hi), as wide as the longest window or `width`."""
    if not 0 <= lo < hi <= len(w):
        raise IndexError(f"windows [{lo}, {hi}) are out of range")
    starts, lens, score_lo = w.starts[lo:hi], w.lens[lo:hi], w.score_lo[lo:hi]
    L = max(int(lens.max()), width or 0)
    pos = np.arange(L, dtype=np.int64)
    absolute = starts[:, None] + pos[None, :]  # index of the input token; its target is +1
    valid = pos[None, :] < lens[:, None]
    x = np.where(valid, val[np.minimum(absolute, val.size - 1)], 0)
    rows, cols = np.nonzero((pos[None, :] >= score_lo[:, None]) & valid)
    at = absolute[rows, cols]
    all_rows, all_cols = np.nonzero(valid)
    all_at = absolute[all_rows, all_cols]
    return BatchIndex(x, rows, cols, val[at + 1], val[at], all_rows, all_cols, val[all_at + 1], at + 1, all_at + 1)
