"""Eval progress as immutable, checksummed segments of per-batch records (design §6).

A record is (batch index, Σ nll in nats as float64, tokens, bytes). A segment is one store object
holding the records flushed together; segments are never rewritten, so a crash loses at most the
records not yet flushed. A segment that does not parse or whose checksum fails (torn, corrupt) is
ignored and its batches are simply redone. The final number sums records in batch-index order, so
it does not depend on order, sharding or interruptions.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from pipeline.store import Layout, Store

SEGMENT_VERSION = 1
_SEG_RE = re.compile(r"/seg-(\d+)$")


@dataclass(frozen=True)
class Record:
    batch: int
    nll: float  # Σ nll (nats) over the batch's scored targets, float64
    tokens: int
    bytes: int

    def as_list(self) -> list:
        return [self.batch, self.nll, self.tokens, self.bytes]


def _checksum(records: list[list]) -> str:
    # json renders floats with repr, which round-trips float64 exactly
    return hashlib.sha256(json.dumps(records, separators=(",", ":")).encode()).hexdigest()


def encode_segment(records: list[Record]) -> bytes:
    rows = [r.as_list() for r in records]
    return json.dumps({"version": SEGMENT_VERSION, "records": rows, "sha256": _checksum(rows)}).encode()


def decode_segment(blob: bytes) -> list[Record] | None:
    """The records, or None when the segment is torn or corrupt."""
    try:
        obj = json.loads(blob)
        rows = obj["records"]
        if obj.get("version") != SEGMENT_VERSION or obj.get("sha256") != _checksum(rows):
            return None
        return [Record(int(b), float(n), int(t), int(y)) for b, n, t, y in rows]
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class ShardProgress:
    records: dict[int, Record]  # batch index → record
    next_segment: int  # first unused segment number (corrupt ones are never overwritten)
    corrupt: list[str]


def load_progress(store: Store, layout: Layout, seed: int, recipe: str, shard: int) -> ShardProgress:
    records: dict[int, Record] = {}
    corrupt, last = [], -1
    for key in store.list(layout.shard_dir(seed, recipe, shard)):
        m = _SEG_RE.search(key)
        if not m:
            continue
        last = max(last, int(m.group(1)))
        recs = decode_segment(store.get(key))
        if recs is None:
            corrupt.append(key)
            continue
        for r in recs:
            records[r.batch] = r
    return ShardProgress(records, last + 1, corrupt)


class SegmentWriter:
    """Buffers records and flushes them as a new segment every `every_s` seconds and on close."""

    def __init__(self, store: Store, layout: Layout, seed: int, recipe: str, shard: int, first: int, every_s: float):
        self.store, self.layout = store, layout
        self.seed, self.recipe, self.shard = seed, recipe, shard
        self.next, self.every_s = first, every_s
        self.buffer: list[Record] = []
        self.last_flush = time.monotonic()
        self.flush_seconds = 0.0  # time spent writing, for the checkpoint-overhead figure

    def add(self, record: Record) -> None:
        self.buffer.append(record)
        if time.monotonic() - self.last_flush >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            t = time.perf_counter()
            key = self.layout.segment(self.seed, self.recipe, self.shard, self.next)
            self.store.put(key, encode_segment(self.buffer))
            self.next += 1
            self.buffer = []
            self.flush_seconds += time.perf_counter() - t
        self.last_flush = time.monotonic()


def merge(records: list[Record]) -> tuple[float, int, int]:
    """Σ nll (float64, in batch-index order), Σ tokens, Σ bytes."""
    nll, tokens, nbytes = 0.0, 0, 0
    for r in sorted(records, key=lambda r: r.batch):
        nll += r.nll
        tokens += r.tokens
        nbytes += r.bytes
    return nll, tokens, nbytes
