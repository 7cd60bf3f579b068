"""The ledger (docs/store.md "Store layout"): a batching ledger writes its events off the launch path, at
most one object per batch window; readers see single events and batches alike, in time order;
`since` skips old objects by name; a store that refuses a batch loses none of it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from pipeline.records.ledger import MAX_BATCH_SPAN_S, SINCE_MARGIN_S, Ledger, key_time
from pipeline.store import Layout, LocalStore, StoreError, open_store
from pipeline.records.units import Unit, UnitState

LAYOUT = Layout("c")


class CountingStore(LocalStore):
    """A local store that counts puts and gets, can be made to fail its puts (`fail`: refuse them;
    `fail_after_write`: write, then report an error, as an S3 put whose answer was lost), and says
    when it wrote."""

    def __init__(self, root):
        super().__init__(root)
        self.puts = self.gets = 0
        self.fail = self.fail_after_write = False
        self.wrote = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        if self.fail:
            raise StoreError(f"{self.uri}/{key}: cannot reach the S3 endpoint (ConnectTimeoutError)")
        super().put(key, data)
        self.wrote.set()
        if self.fail_after_write:
            raise StoreError(f"{self.uri}/{key}: S3 put failed: ReadTimeoutError")

    def get(self, key: str) -> bytes:
        self.gets += 1
        return super().get(key)


@pytest.fixture
def store(tmp_path):
    return CountingStore(tmp_path / "st")


def objects(store) -> list:
    return [store.get_json(k) for k in store.list(LAYOUT.events)]


def test_recording_writes_nothing_until_the_batch_is_flushed_then_one_object(store):
    ledger = Ledger(store, LAYOUT, "r", batch_s=3600)  # the writer never ticks in this test
    returned = [ledger.record(Unit.train(s), UnitState.RUNNING, attempt=f"a{s}") for s in range(100)]
    assert store.puts == 0 and returned[0]["unit"] == "train/0" and returned[0]["version"] == 1
    ledger.flush()
    (obj,) = objects(store)
    assert obj["version"] == 2 and obj["run"] == "r" and obj["events"] == returned
    assert key_time(store.list(LAYOUT.events)[0]) == returned[0]["time"]  # named by its first event
    ledger.flush()  # nothing queued: nothing written
    assert store.puts == 1
    ledger.close()
    assert store.puts == 1


def test_the_background_writer_puts_at_most_one_object_per_window(store):
    window = 0.05
    start = time.monotonic()
    ledger = Ledger(store, LAYOUT, "r", batch_s=window)
    recorded = [ledger.record(Unit.train(i), UnitState.RUNNING) for i in range(20)]
    assert store.wrote.wait(30), "the writer wrote nothing on its own"
    for i in range(300):
        recorded.append(ledger.placed(Unit.train(i), node_id="n1"))
    ledger.close()
    # Event.wait never returns early: the writer ticked at most elapsed / window times, close() wrote once more
    assert store.puts <= (time.monotonic() - start) / window + 1
    assert all(o["version"] == 2 for o in objects(store))
    assert Ledger(store, LAYOUT, "reader").events() == recorded


def test_close_writes_everything_is_idempotent_and_later_events_are_written_at_once(store):
    with Ledger(store, LAYOUT, "r", batch_s=3600) as ledger:
        first = ledger.waiting("train/1", "4 GPUs")
        assert store.puts == 0
    assert [o["events"] for o in objects(store)] == [[first]]
    ledger.close()
    late = ledger.waiting("train/1", None)
    assert store.puts == 2 and objects(store)[-1] == late  # one version-1 object


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_readers_see_single_events_and_batches_in_time_order(kind, tmp_path, request):
    st = open_store(str(tmp_path / "st")) if kind == "local" else open_store(f"s3://{request.getfixturevalue('s3_bucket')}/p")
    single, batched = Ledger(st, LAYOUT, "task"), Ledger(st, LAYOUT, "driver", batch_s=3600)
    a = single.placed(Unit.train(1), node_id="n1")
    b = batched.record(Unit.train(1), UnitState.RUNNING)
    c = batched.record(Unit.train(2), UnitState.RUNNING)
    d = single.placed(Unit.train(2), node_id="n2")
    assert batched.events() == [a, b, c, d]  # its own queued events included
    batched.close()
    assert sorted(o["version"] for o in [st.get_json(k) for k in st.list(LAYOUT.events)]) == [1, 1, 2]
    e = batched.record(Unit.train(1), UnitState.FAILED, reason="bug")
    assert Ledger(st, LAYOUT, "reader").events() == [a, b, c, d, e]
    assert set(Ledger(st, LAYOUT, "reader").failed()) == {"train/1"}


def put_at(store, t: float, *events_at: float, rand: str = "00000000") -> None:
    """An object named for time `t`: one version-1 event at `t`, or a batch of events at `events_at`."""
    ev = lambda at: {"version": 1, "time": at, "run": "old", "event": "placed", "unit": "train/1"}  # noqa: E731
    body = {"version": 2, "run": "old", "events": [ev(x) for x in events_at]} if events_at else ev(t)
    store.put_json(f"{LAYOUT.events}/{int(t * 1e9):020d}-{rand}.json", body)


def test_since_fetches_only_objects_that_can_hold_newer_events(store):
    since = 1_700_000_000.0
    for h in range(1, 11):
        put_at(store, since - 3600 * h)  # hours old: never fetched
    put_at(store, since - SINCE_MARGIN_S - 1, since - SINCE_MARGIN_S - 1, since - SINCE_MARGIN_S - 1 + MAX_BATCH_SPAN_S)
    put_at(store, since - 20, since - 20, since + 5)  # a batch named before `since` holding a later event
    put_at(store, since + 1)
    gets = store.gets
    got = Ledger(store, LAYOUT, "status").events(since=since)
    assert [e["time"] for e in got] == [since + 1, since + 5]
    assert store.gets - gets == 2
    assert len(Ledger(store, LAYOUT, "status").events()) == 10 + 2 + 2 + 1


def test_a_batch_spans_at_most_the_span_since_relies_on(store, monkeypatch):
    import pipeline.records.ledger

    t0 = 1_700_000_000 * 10**9
    clock = iter(t0 + s * 10**9 for s in range(0, 300, 5))  # five minutes of events queued (a store outage, say)
    monkeypatch.setattr(pipeline.records.ledger, "time", SimpleNamespace(time_ns=lambda: next(clock)))
    ledger = Ledger(store, LAYOUT, "r", batch_s=3600)
    recorded = [ledger.placed(Unit.train(1), node_id="n1") for _ in range(60)]
    ledger.close()
    assert 300 / MAX_BATCH_SPAN_S <= store.puts <= 300 / MAX_BATCH_SPAN_S + 1
    for k in store.list(LAYOUT.events):
        last = store.get_json(k)["events"][-1]["time"]
        assert last - key_time(k) < MAX_BATCH_SPAN_S < SINCE_MARGIN_S
    assert Ledger(store, LAYOUT, "reader").events() == recorded


def test_a_store_that_refuses_a_batch_keeps_it_queued_logs_once_and_close_raises(store):
    lines: list[str] = []
    ledger = Ledger(store, LAYOUT, "r", batch_s=3600, log=lines.append)
    store.fail = True
    a = ledger.record(Unit.train(1), UnitState.RUNNING)
    with pytest.raises(StoreError, match="cannot reach"):
        ledger.flush()
    b = ledger.record(Unit.train(1), UnitState.DONE)
    with pytest.raises(StoreError, match="cannot reach"):
        ledger.close()
    with pytest.raises(StoreError, match="cannot reach"):
        ledger.close()
    assert store.list(LAYOUT.events) == [] and ledger.events() == [a, b]
    assert len(lines) == 1 and "1 event(s)" in lines[0] and "\n" not in lines[0] and "keeping them queued" in lines[0]
    store.fail = False
    ledger.close()
    assert [o["events"] for o in objects(store)] == [[a, b]] and len(lines) == 2


def test_a_put_that_wrote_but_reported_an_error_is_retried_without_duplicates(store):
    ledger = Ledger(store, LAYOUT, "r", batch_s=3600)
    store.fail_after_write = True
    a = ledger.record(Unit.train(1), UnitState.RUNNING)
    with pytest.raises(StoreError):
        ledger.flush()
    assert ledger.events() == [a]  # in the store and still queued: seen once
    b = ledger.record(Unit.train(1), UnitState.DONE)
    store.fail_after_write = False
    ledger.close()
    assert [o["events"] for o in objects(store)] == [[a, b]]  # the same name, rewritten whole
    assert Ledger(store, LAYOUT, "reader").events() == [a, b]


def test_an_unknown_ledger_object_is_named_in_one_line(store):
    store.put_json(f"{LAYOUT.events}/{time.time_ns():020d}-ffffffff.json", {"version": 3, "things": []})
    with pytest.raises(StoreError, match=r"events/\d{20}-ffffffff\.json: not a ledger object this pipeline knows \(version 3"):
        Ledger(store, LAYOUT, "reader").events()
