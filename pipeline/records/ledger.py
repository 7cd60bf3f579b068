"""Append-only event ledger in the store: unit transitions, placements, cluster snapshots
(docs/store.md "Store layout"). Cost and progress are computed from these later.

Objects are `events/<time_ns:020d>-<rand>.json`: names sort by time and are never shared, so several
drivers (or a restarted one) and their Ray tasks append without coordination. Two forms:

- version 1, one event: `{"version": 1, "time": ..., "run": ..., "event": ..., ...}`, written
  synchronously (Ray tasks' `placed` events, CLI commands, older drivers);
- version 2, a batch: `{"version": 2, "run": ..., "events": [event, ...]}`, each event a version-1 body,
  named by its FIRST event's time. A driver (`batch_s`) queues its events and a background writer puts
  what is queued as one object at most every `batch_s` seconds, off the launch path. A batch spans at
  most `MAX_BATCH_SPAN_S` of event time, so `events(since=...)` can skip objects by name alone. A batch
  whose put failed is retried under the same name (with what was queued since, within that span), so a
  put that succeeded but reported an error does not write its events twice.

Nothing depends on the ledger for correctness: a unit is DONE when its commit object is in the store,
whatever the ledger says or has not written yet. `events()` reads both forms through `unpack`.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.store import Layout, Store, StoreError
from pipeline.records.units import Unit, UnitState

EVENT_VERSION = 1
BATCH_VERSION = 2
# a batch holds events at most this long after its first (named) one; `events(since=)` fetches
# objects named up to SINCE_MARGIN_S before `since`, which is then always enough
MAX_BATCH_SPAN_S = 30.0
SINCE_MARGIN_S = 60.0


class Ledger:
    """`batch_s`: None writes each event at once (one object per event); a number queues them for a
    background writer (one object at most every `batch_s` seconds): call `close()` (or use `with`)
    when done, so the last batch is written. `log` gets one line when a batch cannot be written
    (the events stay queued and are retried) and one when the store takes them again."""

    def __init__(self, store: Store, layout: Layout, run_id: str, batch_s: float | None = None,
                 log: Callable[[str], None] | None = None):
        if batch_s is not None and batch_s <= 0:
            raise ValueError(f"batch_s must be > 0 (got {batch_s})")
        self.store, self.layout, self.run_id = store, layout, run_id
        self.batch_s, self._log = batch_s, log or (lambda line: None)
        self._queued: list[tuple[str, dict[str, Any]]] = []  # (its own object name, event), in time order
        self._lock = threading.Lock()  # guards _queued; the launch path holds it only to append
        self._writing = threading.Lock()  # one batch write at a time; readers hold it for a consistent view
        self._error: Exception | None = None  # the last failed write, until one succeeds
        self._closed = threading.Event()
        self._writer: threading.Thread | None = None  # started by the first event: a ledger that records nothing has none

    def record(self, unit: Unit, state: UnitState, **detail: Any) -> dict[str, Any]:
        """A state transition, written by the driver."""
        return self._append({"event": "state", "unit": unit.id, "state": state.value, "driver_host": platform.node(), **detail})

    def placed(self, unit: Unit, **where: Any) -> dict[str, Any]:
        """Where an attempt of a unit landed (node, GPUs, pid), written by the task itself."""
        return self._append({"event": "placed", "unit": unit.id, "host": platform.node(), **where})

    def cluster(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """The nodes the driver sees now (id, alive, GPUs, GPU type, prices, pod): written when they
        change and once as the run ends, so the bill (every node's time, idle included) and pod time
        no unit used can be told from the ledger."""
        return self._append({"event": "cluster", "nodes": nodes})

    def waiting(self, key: str, what: str | None) -> dict[str, Any]:
        """A unit starts (`what`) or stops (None) waiting for something the cluster lacks."""
        return self._append({"event": "waiting", "key": key, "what": what})

    def _append(self, body: dict[str, Any]) -> dict[str, Any]:
        now = time.time_ns()
        event = {"version": EVENT_VERSION, "time": now / 1e9, "run": self.run_id, **body}
        key = f"{self.layout.events}/{now:020d}-{os.urandom(4).hex()}.json"
        with self._lock:
            if self.batch_s is not None and not self._closed.is_set():
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_every_tick, name=f"ledger-{self.run_id}", daemon=True)
                    self._writer.start()
                self._queued.append((key, event))
                return event
        self.store.put_json(key, event)  # unbatched, or after close()
        return event

    # --- the batch writer -------------------------------------------------------------------------

    def _write_every_tick(self) -> None:
        assert self.batch_s is not None
        while not self._closed.wait(self.batch_s):
            try:
                self.flush()
            except Exception:  # flush logged it and kept the events queued; flush()/close() raise it
                pass

    def flush(self) -> None:
        """Write what is queued now (one object per `MAX_BATCH_SPAN_S` of it; normally one). Raises
        the store's error if it cannot; the events stay queued and the writer retries them."""
        with self._writing:
            with self._lock:
                queued = list(self._queued)
            for batch in _spans(queued):
                try:
                    self.store.put_json(batch[0][0], {"version": BATCH_VERSION, "run": self.run_id, "events": [e for _, e in batch]})
                except Exception as e:
                    if self._error is None:
                        self._log(f"ledger: cannot write {len(queued)} event(s) to {self.store.uri}/{self.layout.events}, "
                                  f"keeping them queued and retrying: {_one_line(e)}")
                    self._error = e
                    raise
                with self._lock:
                    del self._queued[: len(batch)]
            if self._error is not None and queued:
                self._log(f"ledger: the store took the queued events again ({len(queued)} written)")
                self._error = None

    def close(self) -> None:
        """Stop the writer and write what is left (raises as `flush` does). Idempotent; events
        recorded after it are written at once, one object each."""
        with self._lock:  # an append that saw the writer open has queued its event before this
            self._closed.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------------

    def events(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every event in time order (stable), this ledger's queued ones included; with `since` (a
        unix time) only those at or after it, and only objects that can hold one are fetched."""
        with self._writing:  # no batch is written and dropped from the queue while we read
            with self._lock:
                queued = [e for _, e in self._queued]
                retried = self._queued[0][0] if self._queued else None  # may be in the store already: queued wins
            # names start with their time: with `since`, the listing itself starts at since − margin
            after = None if since is None else f"{self.layout.events}/{max(0, int((since - SINCE_MARGIN_S) * 1e9)):020d}"
            keys = [k for k in self.store.list(self.layout.events, start_after=after) if k != retried]
            objs = self.store.get_many_json(keys)  # concurrently: a long campaign has thousands
            out = [e for k, obj in zip(keys, objs, strict=True) for e in unpack(obj, f"{self.store.uri}/{k}")] + queued
        if since is not None:
            out = [e for e in out if e.get("time", 0.0) >= since]
        return sorted(out, key=lambda e: e.get("time", 0.0))

    def failed(self) -> dict[str, dict[str, Any]]:
        """Units whose latest state is FAILED → that event (reason, error class, log tail)."""
        return {u: e for u, e in latest_states(self.events()).items() if e["state"] == UnitState.FAILED.value}


def _spans(queued: list[tuple[str, dict[str, Any]]]) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The queue cut into batches of at most MAX_BATCH_SPAN_S each: the same cuts every time for
    the same head, so a retried batch keeps its name."""
    batch: list[tuple[str, dict[str, Any]]] = []
    for item in queued:
        if batch and item[1]["time"] - batch[0][1]["time"] >= MAX_BATCH_SPAN_S:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def unpack(obj: Any, where: str) -> list[dict[str, Any]]:
    """The events in one ledger object, either form; an unknown form is a one-line StoreError."""
    version = obj.get("version") if isinstance(obj, dict) else None
    if version == EVENT_VERSION:
        return [obj]
    if version == BATCH_VERSION and isinstance(obj.get("events"), list):
        return obj["events"]
    raise StoreError(f"{where}: not a ledger object this pipeline knows (version {version!r}; it reads 1 and 2)")


def key_time(key: str) -> float | None:
    """The unix time in a ledger object's name (`<time_ns>-<rand>.json`), None if it has none."""
    stamp = key.rpartition("/")[2].partition("-")[0]
    return int(stamp) / 1e9 if stamp.isdigit() else None


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def latest_states(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """unit id → its latest state event (events in time order, as `Ledger.events` gives them)."""
    return {e["unit"]: e for e in events if e.get("event") == "state"}
