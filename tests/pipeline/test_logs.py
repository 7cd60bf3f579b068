"""`pipeline logs --follow` (pipeline/logs.py): each poll reads only the chunks a script's rank
wrote since the last, and follows the seed's training to its next attempt when it restarts."""

from __future__ import annotations

import time

from bench.fake_units import CountingStore
from pipeline.logs import LogFollower, TrainingEnd
from pipeline.records.ledger import Ledger
from pipeline.store import Layout, open_store
from pipeline.records.units import Unit, UnitState
from workers.script_logs import LogSink


def start(store, layout, attempt: str, t: float) -> LogSink:
    store.put_new_json(f"{layout.script_log(1, attempt)}/start.json", {"version": 1, "time": t})
    return LogSink(store, layout.script_log(1, attempt, 0), every_s=0.0)


def write(sink: LogSink, *lines: str) -> None:
    for ln in lines:
        sink.add(ln + "\n")
    sink.flush(force=True)


def test_a_follower_reads_only_new_chunks_and_follows_a_restart(tmp_path):
    store, layout = CountingStore(open_store(str(tmp_path / "store"))), Layout("t")
    follow = LogFollower(store, layout, 1, look_every_s=0.0)
    assert follow.poll() == "" and follow.attempt is None  # nothing started yet

    a = start(store, layout, "aaaa", 1.0)
    write(a, "step:1/3")
    write(a, "step:2/3")
    assert follow.poll() == "step:1/3\nstep:2/3\n" and follow.attempt == "aaaa"
    write(a, "step:3/3")
    before = store.calls["get_many"]
    assert follow.poll() == "step:3/3\n"
    assert store.calls["get_many"] - before == 1  # the one new chunk, not the whole log again
    assert follow.poll() == ""

    write(a, "Traceback: the node died")  # the old attempt's last words land with the restart, between two polls
    b = start(store, layout, "bbbb", 2.0)  # the group restarted: a new attempt, a new log
    write(b, "resumed from checkpoint at step 2")
    assert follow.poll() == (
        "Traceback: the node died\n--- attempt bbbb (the seed's training started again) ---\nresumed from checkpoint at step 2\n"
    )
    write(a, "a late line of the old attempt")  # a fixed attempt is followed, whatever starts later
    assert LogFollower(store, layout, 1, attempt="aaaa").poll().endswith("a late line of the old attempt\n")


def test_a_restart_is_looked_for_at_most_every_look_every_s(tmp_path):
    store, layout = CountingStore(open_store(str(tmp_path / "store"))), Layout("t")
    write(start(store, layout, "aaaa", 1.0), "step:1/3")
    follow = LogFollower(store, layout, 1)  # 30 s by default
    assert follow.poll() == "step:1/3\n"
    lists = store.calls["list"]
    for _ in range(5):  # nothing new: one listing of the log's folder each, the training folder not again
        assert follow.poll() == ""
    assert store.calls["list"] - lists == 5


def test_the_training_ends_when_it_commits_or_fails(tmp_path):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    ended = TrainingEnd(store, layout, 1)
    with Ledger(store, layout, "run") as ledger:
        ledger.record(Unit.train(1), UnitState.RUNNING, attempt="aaaa")
    assert not ended.now() and not ended.now()
    with Ledger(store, layout, "run") as ledger:
        ledger.record(Unit.train(2), UnitState.FAILED, attempt="x")  # another seed's
    assert not ended.now()
    with Ledger(store, layout, "run") as ledger:
        ledger.record(Unit.train(1), UnitState.FAILED, attempt="aaaa")
    assert ended.now()
    assert TrainingEnd(store, layout, 2).now()  # read whole the first time: an earlier FAILED counts
    store.put_new_json(layout.manifest(3), {"version": 1})
    assert TrainingEnd(store, layout, 3).now()


def test_a_failure_is_seen_when_the_drivers_clock_is_behind_ours(tmp_path, monkeypatch):
    store, layout = open_store(str(tmp_path / "store")), Layout("t")
    ended = TrainingEnd(store, layout, 1)
    behind = time.time_ns() - 90 * 10**9  # the driver's clock, 90 s behind this machine's
    monkeypatch.setattr("pipeline.records.ledger.time.time_ns", lambda: behind)
    with Ledger(store, layout, "run") as ledger:
        ledger.record(Unit.train(1), UnitState.RUNNING, attempt="aaaa")
    assert not ended.now()
    behind += 10**9
    with Ledger(store, layout, "run") as ledger:
        ledger.record(Unit.train(1), UnitState.FAILED, attempt="aaaa")
    assert ended.now()
