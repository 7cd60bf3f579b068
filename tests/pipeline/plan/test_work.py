"""The work model against windows and batches counted by hand (a plain loop over window starts,
docs/design.md §5), for three specs: sliding exact, SLOT legacy, and TTT per chunk on 2 GPUs."""

from __future__ import annotations

import math

from pipeline.plan.work import campaign_work
from tests.conftest import make_spec
from workers.data import count_val_tokens


def hand_windows(T: int, seq_len: int, stride: int, window_filter: str) -> list[tuple[int, int]]:
    """(start, first scored position) of every kept window, one start at a time."""
    out, s = [], 0
    while s < T:
        n = min(s + seq_len, T) - s
        if window_filter == "exact":
            keep, lo = s == 0 or s + seq_len - stride < T, 0 if s == 0 else seq_len - stride
        else:  # legacy
            keep, lo = n >= stride or s == 0, 0 if s == 0 else max(n - stride, 0)
        if keep:
            out.append((s, lo))
        s += stride
    return out


def test_sliding_exact(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "s"), evals=[{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8}])
    w = campaign_work(spec)
    T = count_val_tokens(data_dir, 3000) - 1
    win = hand_windows(T, 64, 16, "exact")
    r = w.recipe("sw")
    assert (r.windows, r.batches) == (len(win), math.ceil(len(win) / 8))
    assert r.shardable and r.gpus == 1 and r.slot_steps == 0
    shards = r.shard_batches(seed=1, cluster_gpus=4)
    assert len(shards) == 4 and sum(shards) == r.batches
    assert w.train.gpus == 2 and w.train.max_steps == 6


def test_slot_legacy(data_dir, tmp_path):
    recipe = {"name": "slot", "seq_len": 64, "stride": 32, "batch_seqs": 4, "window_filter": "legacy",
              "passes": [{"kind": "slot", "steps": 5}]}
    spec = make_spec(data_dir, str(tmp_path / "s"), data={"val_tokens": 2000}, evals=[recipe])
    r = campaign_work(spec).recipe("slot")
    win = hand_windows(count_val_tokens(data_dir, 2000) - 1, 64, 32, "legacy")
    assert (r.windows, r.batches, r.slot_steps) == (len(win), math.ceil(len(win) / 4), 5)
    assert r.shard_batches(seed=1, cluster_gpus=100) == [1] * r.batches  # at most one shard per batch


def test_ttt_per_chunk(data_dir, tmp_path):
    recipe = {"name": "ttt", "seq_len": 64, "stride": 16, "batch_seqs": 8,
              "passes": [{"kind": "ttt", "chunk_tokens": 512, "epochs": 2, "gpus": 2}, {"kind": "sliding"}]}
    spec = make_spec(data_dir, str(tmp_path / "s"), evals=[recipe])
    r = campaign_work(spec).recipe("ttt")
    win = hand_windows(count_val_tokens(data_dir, 3000) - 1, 64, 16, "exact")
    chunks: dict[int, int] = {}
    for s, lo in win:  # a window belongs to the chunk of its first scored target
        chunks[(s + lo) // 512] = chunks.get((s + lo) // 512, 0) + 1
    assert r.windows == len(win) and r.ttt_chunks == len(chunks) and r.ttt_epochs == 2
    assert r.batches == sum(math.ceil(n / 8) for n in chunks.values())  # batches never cross a chunk
    assert (r.gpus, r.shardable) == (2, False)
    assert r.shard_batches(seed=1, cluster_gpus=4) == [r.batches]  # one unit, however many GPUs
