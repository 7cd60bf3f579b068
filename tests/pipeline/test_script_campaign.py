"""A user's own torchrun-style train_gpt.py through the driver (docs/scripts.md: Bring your own
train_gpt.py): tests/workers/golf_script/train_gpt.py trains three seeds on 2-worker groups of a
local Ray instance; seed 1 trains and its artifact is evaluated through an adapter, seed 2's script
raises (FAILED at once, with its log tail), seed 3's rank 1 is SIGKILLed mid-run once and the
restarted group resumes from the checkpoint folder it gets back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.run.driver import Driver
from pipeline.records.ledger import Ledger
from pipeline.spec import parse_spec
from pipeline.store import Layout, open_store
from pipeline.progress.summary import build_summary
from tests.conftest import make_spec
from workers.script_logs import read_log

SCRIPT = Path(__file__).parents[1] / "workers" / "golf_script" / "train_gpt.py"


@pytest.fixture(scope="module")
def campaign(ray_local, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("script-campaign")
    store = str(tmp / "store")
    d = make_spec(data_dir, store, seeds=[1, 2, 3]).model_dump(mode="json")
    d["train"] = {
        "kind": "script", "script": str(SCRIPT.parent), "world_size": 2, "gpus_per_worker": 1,
        "artifacts": ["final_model.pt"], "adapter": "tests.workers.toy_adapter:load", "checkpoints": {"env": "CKPT_DIR"},
        "max_wallclock_s": 60, "margin_s": 240, "max_failures": 2,
        "env": {
            "ITERATIONS": "6", "VOCAB_SIZE": "512", "CRASH_SEEDS": "2", "CRASH_AT_STEP": "2", "KILL_SEEDS": "3", "KILL_AT_STEP": "3",
            "KILL_MARKER_DIR": str(tmp), "KILL_AFTER_GLOB": f"{store}/t/seeds/3/train/script-ckpt/*/node-0/snap-*.json",
        },
    }
    spec = parse_spec(d)
    lines: list[str] = []
    report = Driver(spec, log=lines.append).run()
    print("\n".join(lines))  # the driver's story, shown when a test below fails
    return spec, report, open_store(store), Layout("t"), lines


def test_a_script_trains_on_a_two_worker_group_and_its_artifact_is_evaluated_through_an_adapter(campaign):
    spec, report, store, layout, _ = campaign
    m = store.get_json(layout.manifest(1))
    assert m["kind"] == "script" and m["train"]["steps"] == 6 and m["train"]["world_size"] == 2
    assert m["train"]["restart"] == {"mode": "fresh", "earlier_attempts": 0}
    blob = SCRIPT.read_bytes()
    assert m["script"]["md5"] == hashlib.md5(blob).hexdigest() and m["script"]["bytes"] == len(blob)
    art = store.get(f"{layout.train_dir(1)}/{m['artifact']}")
    assert m["sha256"] == hashlib.sha256(art).hexdigest() and m["bytes"] == len(art)
    assert m["size"] == {"code_bytes": len(blob), "artifact_bytes": len(art), "total_bytes": len(blob) + len(art),
                         "limit_bytes": 16_000_000, "within_limit": True}
    assert set(m["script_final"]) == {"final_toy_roundtrip_exact"}
    result = store.get_json(layout.result(1, "sw"))
    assert result["model"]["format"] == "adapter"
    s = build_summary(spec, store)
    vs = s["evals"]["sw"]["seeds"]["1"]["script"]
    assert vs["name"] == "final_toy_roundtrip_exact"
    assert vs["diff"] == pytest.approx(result["val_bpb"] - m["script_final"]["final_toy_roundtrip_exact"]["val_bpb"])
    assert s["seeds"]["1"]["train"]["steps"] == 6 and s["seeds"]["1"]["train"]["script_final"] == m["script_final"]
    _, text = read_log(store, layout, 1)
    assert "step:6/6 val_loss:" in text and "final_toy_roundtrip_exact" in text  # the whole log is in the store


def test_a_crashing_script_ends_failed_with_its_log_tail(campaign):
    spec, report, store, layout, _ = campaign
    from pipeline.records.units import Unit

    reason = report.failed[Unit.train(2)]
    assert reason.startswith("script-error: ScriptError: rank ") and "ValueError: the learning rate schedule is broken at step 2" in reason
    events = [e for e in Ledger(store, layout, "x").events() if e.get("unit") == "train/2"]
    failed = [e for e in events if e.get("state") == "FAILED"]
    assert len(failed) == 1 and failed[0]["class"] == "deterministic"
    # every rank raises; whichever recorded its error first gives the tail (rank 0's also has the step lines it printed)
    assert any("Traceback (most recent call last):" in ln for ln in failed[0]["tail"])
    if reason.startswith("script-error: ScriptError: rank 0"):
        assert any(ln.startswith("step:1/6 train_loss:") for ln in failed[0]["tail"])
    starts = [e for e in events if e.get("state") == "RUNNING"]
    assert len(starts) == 1  # deterministic: not retried
    _, text = read_log(store, layout, 2)
    assert "step:1/6" in text and "ValueError" in text
    assert not store.exists(layout.manifest(2))


def test_a_script_killed_mid_run_restarts_from_its_checkpoint_folder(campaign):
    spec, report, store, layout, _ = campaign
    m = store.get_json(layout.manifest(3))
    restart = m["train"]["restart"]
    assert restart["mode"] == "checkpoint" and restart["earlier_attempts"] == 1 and restart["resumed_from"]
    assert m["train"]["steps"] == 6
    _, text = read_log(store, layout, 3)
    assert "resumed from checkpoint at step" in text
    s = build_summary(spec, store)
    assert s["seeds"]["3"]["train"]["restart"]["mode"] == "checkpoint"
    assert store.exists(layout.result(3, "sw"))
    assert store.list(layout.script_ckpt(3)) == []  # trained: the folder's snapshots are gone


def test_pipeline_logs_prints_a_seeds_script_output_from_the_store(campaign, capsys):
    from pipeline.cli import main

    spec, _, store, _, _ = campaign
    capsys.readouterr()
    assert main(["logs", f"{spec.store}/t", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "step:1/6 train_loss:" in out and "ValueError: the learning rate schedule is broken" in out
    assert main(["logs", f"{spec.store}/t", "--seed", "3", "--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # killed once, then restarted
    assert main(["logs", f"{spec.store}/t", "--seed", "9"]) == 2


def test_failed_and_killed_attempts_leave_no_run_dir_on_the_node(campaign):
    """A failed attempt's run directory (its checkpoints folder: GBs for a real script) is removed
    from the container disk like a finished one's; a restart gets the folder back from the store."""
    from workers.script_train import run_dir

    spec, _, store, layout, _ = campaign
    attempts = {(int(e["unit"].split("/")[1]), e["attempt"]) for e in Ledger(store, layout, "x").events()
                if e.get("state") == "RUNNING" and e["unit"].startswith("train/")}
    assert {s for s, _ in attempts} == {1, 2, 3} and len(attempts) == 4  # seed 3 ran twice
    assert [a for s, a in attempts if run_dir(spec, s, a).exists()] == []


def test_a_scripts_group_waits_at_its_end_as_long_as_its_scripts_may_run(campaign):
    """Ranks whose scripts end far apart (one rank's own final eval) meet at the group's end: its
    collectives wait the script's time cap plus the commit, not torch's 30-minute default."""
    from pipeline.run.tasks import SCRIPT_END_SLACK_S

    spec, _, store, layout, _ = campaign
    placed = [e for e in Ledger(store, layout, "x").events() if e.get("event") == "placed" and e["unit"].startswith("train/")]
    assert placed and {e.get("collective_timeout_s") for e in placed} == {spec.train.timeout_s + SCRIPT_END_SLACK_S}
