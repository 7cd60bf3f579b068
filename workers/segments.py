"""Eval progress as immutable, checksummed segments of per-batch records (docs/design.md §6).

A record is (batch index, Σ nll in nats as float64, tokens, bytes). A segment is one store object
holding the records flushed together; segments are never rewritten, so a crash loses at most the
records not yet flushed. A segment that does not parse or whose checksum fails (torn, corrupt) is
ignored and its batches are simply redone. The final number sums records in batch-index order, so
it does not depend on order, sharding or interruptions. Several attempts of one unit may write
records at once (fenced: each its own segment names); any complete set of records gives the number.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field

from pipeline.store import Layout, Store

SEGMENT_VERSION = 1
# seg-<attempt>-<n>; plain seg-<n> in stores written before attempts had ids
_SEG_RE = re.compile(r"/seg-(?:([0-9a-f]+)-)?\d+$")


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


def encode_segment(records: list[Record], written: float | None = None) -> bytes:
    """`time` (when the segment was flushed, unix seconds) is outside the checksum, which covers the
    records: progress rates and the cost of lost work are read from it."""
    rows = [r.as_list() for r in records]
    body = {"version": SEGMENT_VERSION, "records": rows, "sha256": _checksum(rows), "time": time.time() if written is None else written}
    return json.dumps(body).encode()


def _decode(blob: bytes) -> tuple[list[Record], float | None] | None:
    try:
        obj = json.loads(blob)
        rows = obj["records"]
        if obj.get("version") != SEGMENT_VERSION or obj.get("sha256") != _checksum(rows):
            return None
        return [Record(int(b), float(n), int(t), int(y)) for b, n, t, y in rows], obj.get("time")
    except (ValueError, KeyError, TypeError):
        return None


def decode_segment(blob: bytes) -> list[Record] | None:
    """The records, or None when the segment is torn or corrupt."""
    out = _decode(blob)
    return None if out is None else out[0]


@dataclass(frozen=True)
class Conflict:
    """Two segments hold different records for one batch (two attempts disagreed)."""

    batch: int
    kept: str  # segment key whose record counts (the first in key order: the same on every read)
    other: str
    nll: tuple[float, float]


@dataclass(frozen=True)
class Segment:
    """What one segment object holds, for progress rates and the cost of lost work."""

    key: str
    attempt: str | None  # None in stores written before attempts had ids
    time: float | None  # when it was flushed; None in stores written before segments had a time
    batches: int


@dataclass
class Progress:
    records: dict[int, Record]  # batch index → record
    corrupt: list[str]
    conflicts: list[Conflict]
    segments: list[Segment] = field(default_factory=list)


def load_progress(store: Store, prefix: str, keys: list[str] | None = None) -> Progress:
    """Every record under `prefix` (a shard, or a whole eval: records are per batch, whichever
    attempt or shard wrote them). Records of one batch from several attempts must be bit-equal;
    where they are not, the first segment in key order wins and the disagreement is reported.
    `keys`: the prefix's listing where the caller already has it."""
    records: dict[int, Record] = {}
    source: dict[int, str] = {}
    corrupt: list[str] = []
    conflicts: list[Conflict] = []
    segments: list[Segment] = []
    found = [(key, m) for key in (store.list(prefix) if keys is None else keys) if (m := _SEG_RE.search(key))]
    for (key, m), data in zip(found, store.get_many([k for k, _ in found]), strict=True):  # key order, whatever the fetch order
        out = _decode(data)
        if out is None:
            corrupt.append(key)
            continue
        recs, written = out
        segments.append(Segment(key, m.group(1), written, len(recs)))
        for r in recs:
            have = records.get(r.batch)
            if have is None:
                records[r.batch], source[r.batch] = r, key
            elif have != r:
                conflicts.append(Conflict(r.batch, source[r.batch], key, (have.nll, r.nll)))
    return Progress(records, corrupt, conflicts, segments)


class SegmentWriter:
    """Buffers records and flushes them as a new segment every `every_s` seconds and on close.
    Segments are named by the attempt and numbered within it, so no other attempt's object is
    ever overwritten (they are written create-only as well)."""

    def __init__(self, store: Store, layout: Layout, seed: int, recipe: str, shard: int, attempt: str, every_s: float):
        self.store, self.layout = store, layout
        self.seed, self.recipe, self.shard, self.attempt = seed, recipe, shard, attempt
        self.next, self.every_s = 0, every_s
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
            key = self.layout.segment(self.seed, self.recipe, self.shard, self.attempt, self.next)
            if not self.store.put_new(key, encode_segment(self.buffer)):
                raise RuntimeError(f"{self.store.uri}/{key} exists: two writers share attempt id {self.attempt}")
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
