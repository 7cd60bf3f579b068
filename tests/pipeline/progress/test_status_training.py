"""`pipeline status` on a seed that is still training: its step (a script's from its log in the
store, ours from its newest checkpoint) and a script's latest val_bpb line."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.records.ledger import Ledger
from pipeline.progress.render import status_table
from pipeline.progress.view import campaign_status
from pipeline.spec import parse_spec
from pipeline.store import Layout, open_store
from pipeline.records.units import Unit, UnitState
from tests.conftest import make_spec


def running(store, layout, seed: int, attempt: str, run: str = "live") -> None:
    Ledger(store, layout, run).record(Unit.train(seed), UnitState.RUNNING, attempt=attempt, gpus=2)


def test_our_trainer_shows_its_newest_checkpoint_step(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"), train={"max_steps": 40})
    store, layout = open_store(spec.store), Layout("t")
    running(store, layout, 1, "a1")
    for step in (10, 20):
        store.put_json(f"{layout.train_ckpt(1, step, 'a1')}/commit.json", {"version": 1, "step": step})
    (t1, t2) = campaign_status(spec, store, live_run="live").trains
    assert (t1.state, t1.steps, t1.planned_steps) == ("RUNNING", 20, 40) and t2.state == "PENDING"


def test_a_script_shows_its_log_step_and_last_val(data_dir, tmp_path):
    script = Path(__file__).parents[2] / "workers" / "golf_script" / "train_gpt.py"
    d = make_spec(data_dir, str(tmp_path / "store")).model_dump(mode="json")
    d["train"] = {"kind": "script", "script": str(script), "world_size": 2, "gpus_per_worker": 1, "artifacts": ["final_model.pt"],
                  "adapter": "tests.workers.toy_adapter:load"}
    spec = parse_spec(d)
    store, layout = open_store(spec.store), Layout("t")
    running(store, layout, 1, "b7")
    store.put_json(f"{layout.script_log(1, 'b7')}/start.json", {"version": 1, "time": 1.0, "attempt": "b7"})
    store.put(f"{layout.script_log(1, 'b7', 0)}/000000.txt", b"step:200/20000 val_loss:2.0510 val_bpb:1.2147 train_time:60000ms step_avg:300.00ms\n")
    store.put(f"{layout.script_log(1, 'b7', 0)}/000001.txt", b"step:400/20000 train_loss:2.0010 train_time:120000ms step_avg:300.00ms\n")
    (t1, _) = campaign_status(spec, store, live_run="live").trains
    assert (t1.steps, t1.planned_steps) == (400, 20000) and t1.last_val == {"step": 200, "val_loss": 2.051, "val_bpb": 1.2147}
    from rich.console import Console

    screen = io.StringIO()
    Console(file=screen, width=200).print(status_table(campaign_status(spec, store, live_run="live")))
    text = screen.getvalue()
    assert "step 400/20000" in text and "val 1.2147 @ step 200" in text
