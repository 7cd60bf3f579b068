"""`pipeline status` while a shard is lost: never 100 % and never an ETA of 0 s for work not done
(issue 22: a pod died under the last shard, status said 100 %, ETA 0 s)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from pipeline.records.ledger import Ledger
from pipeline.progress.render import duration, progress_line, share, status_lines, status_table
from pipeline.progress.view import campaign_status
from pipeline.spec import parse_spec
from pipeline.store import Layout, open_store
from pipeline.records.units import Unit, UnitState
from tests.conftest import TINY_MODEL
from workers.segments import Record, encode_segment

N = 2000  # batches; shard 1 holds the last 4, of which its lost attempt scored 1


def lost_last_shard(tmp_path):
    spec = parse_spec({
        "name": "t", "store": str(tmp_path / "s"), "seeds": [7], "data": {"shards": "/x", "tokenizer": "/x/t.model"},
        "model": TINY_MODEL, "evals": [{"name": "sw", "shards": 2}],
    })
    store, layout = open_store(spec.store), Layout("t")
    shards = [list(range(N - 4)), list(range(N - 4, N))]
    store.put_json(layout.plan(7, "sw"), {"version": 1, "recipe": "sw", "windows": N, "batches": N, "shards": shards})
    now = time.time()
    rec = lambda b: Record(b, 700.0 + b % 7, 100, 1000)  # noqa: E731
    for i in range(4):  # shard 0 scored everything it holds, in four segments a second apart
        part = shards[0][i * (N - 4) // 4:(i + 1) * (N - 4) // 4]
        store.put(layout.segment(7, "sw", 0, "a0", i), encode_segment([rec(b) for b in part], written=now - 4 + i))
    store.put(layout.segment(7, "sw", 1, "a1", 0), encode_segment([rec(N - 4)], written=now - 1))
    ledger = Ledger(store, layout, "live")
    ledger.record(Unit.eval(7, "sw", 0), UnitState.RUNNING, attempt="a0", gpus=1)
    ledger.record(Unit.eval(7, "sw", 1), UnitState.RUNNING, attempt="a1", gpus=1)
    return spec, store, ledger


def test_a_lost_shard_shows_no_100_percent_and_no_eta(tmp_path):
    spec, store, ledger = lost_last_shard(tmp_path)
    st = campaign_status(spec, store, live_run="live")
    (e,) = st.evals
    assert e.state == "RUNNING" and e.eta_s is not None and e.eta_s < 0.5  # 3 batches left at ~500/s
    assert duration(e.eta_s) == "1s"  # rounded up: work left is never "0s"
    assert "100" not in share(e.batches_done, e.batches) and share(e.batches_done, e.batches) == "99.8%"

    # the driver saw the node of shard 1 die: INTERRUPTED, then PENDING for its retry
    ledger.record(Unit.eval(7, "sw", 1), UnitState.INTERRUPTED, attempt="a1", kind="node-death")
    ledger.record(Unit.eval(7, "sw", 1), UnitState.PENDING, reason="node-death (transient)", delay_s=0.2)
    st = campaign_status(spec, store, live_run="live")
    (e,) = st.evals
    assert e.state == "RUNNING" and e.lost_units == 1 and e.eta_s is None and st.eta_s is None
    screen = io.StringIO()
    Console(file=screen, width=200).print(status_table(st))
    row = next(ln for ln in screen.getvalue().splitlines() if "│ sw " in ln)  # the eval's row (shard 0's own bar is full)
    lines = "\n".join(status_lines(st)) + progress_line(st)
    assert "99.8%" in row and "1 lost" in row and "0s" not in row
    assert "100.0%" not in lines and "100%" not in lines and "ETA 0s" not in lines and "99.8%" in lines

    ledger.record(Unit.eval(7, "sw", 1), UnitState.RUNNING, attempt="a2", gpus=1)  # placed again
    (e,) = campaign_status(spec, store, live_run="live").evals
    assert e.lost_units == 0 and e.eta_s is not None


def test_running_shards_have_their_own_bars_in_status_and_the_live_view(tmp_path):
    from pipeline.progress.live import LiveProgress

    spec, store, ledger = lost_last_shard(tmp_path)
    ledger.record(Unit.eval(7, "sw", 1), UnitState.INTERRUPTED, attempt="a1", kind="node-death")
    ledger.record(Unit.eval(7, "sw", 1), UnitState.PENDING, reason="node-death (transient)", delay_s=0.2)
    st = campaign_status(spec, store, live_run="live")
    (e,) = st.evals
    assert [(sh.shard, sh.done, sh.batches, sh.lost) for sh in e.shards] == [(0, N - 4, N - 4, False), (1, 1, 4, True)]
    screen = io.StringIO()
    Console(file=screen, width=200).print(status_table(st))
    text = screen.getvalue()
    assert "└ shard 0" in text and "└ shard 1 (re-placing)" in text and "LOST" in text and "25.0%" in text

    live = LiveProgress(spec, store, Console(file=io.StringIO(), force_terminal=True, width=200))
    live.start("live")
    live.stop()  # no drawing thread: the bars are drawn once, here
    live._draw(live.snapshot())
    tasks = {t.description: t for t in live._bars.tasks}
    assert list(tasks) == ["[bold]campaign[/]", "7/sw", "  └ shard 0", "  └ shard 1 (re-placing)"]
    assert tasks["  └ shard 1 (re-placing)"].fields["pct"] == "25%" and tasks["7/sw"].fields["pct"] == "99%"
