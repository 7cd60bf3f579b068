import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.driver import CampaignChanged, Driver, check_campaign, pick_evals
from pipeline.ledger import Ledger
from pipeline.store import Layout, open_store
from pipeline.units import IllegalTransition, Unit, UnitState, UnitTracker
from tests.conftest import make_spec


def write_spec(path, spec):
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def test_campaign_end_to_end_then_rerun_skips_everything(ray_local, data_dir, tmp_path, capsys):
    spec = make_spec(
        data_dir, str(tmp_path / "store"), seeds=[1, 2, 3], results_dir=str(tmp_path / "results"), train={"max_steps": 40}
    )
    f = write_spec(tmp_path / "c.yaml", spec)
    assert main(["run", str(f)]) == 0
    summary = json.loads((tmp_path / "results" / "t" / "summary.json").read_text())
    sw = summary["evals"]["sw"]
    assert sw["complete"] and sw["n"] == 3 and sw["std_ddof"] == 1
    for r in sw["seeds"].values():
        assert r["val_bpb"] < r["unigram_bpb"]  # a few steps already beat a unigram model
    store, layout = open_store(spec.store), Layout("t")
    shards = [len(store.get_json(layout.plan(s, "sw"))["shards"]) for s in (1, 2, 3)]
    assert shards == [4, 4, 4]  # default: one shard per GPU of the cluster
    expected = {f"train/{s}" for s in (1, 2, 3)} | {f"eval/{s}/sw/{k}" for s in (1, 2, 3) for k in range(4)}
    assert set(summary["timings"]["units_s"]) == expected

    events = Ledger(store, layout, "x").events()
    started = [e["unit"] for e in events if e.get("state") == "RUNNING"]
    assert sorted(started) == sorted(expected)  # each unit ran once
    placed = {e["unit"] for e in events if e["event"] == "placed"}
    assert placed == expected  # every attempt (training ranks too) says where it ran
    assert all(e["version"] == 1 for e in events)
    before = store.list()
    capsys.readouterr()

    assert main(["run", str(f)]) == 0
    assert "ran 0 unit(s), skipped 6 already DONE" in capsys.readouterr().out  # 3 trains + 3 evals
    assert store.list() == before  # nothing ran, nothing was written


def test_changed_spec_is_refused_and_nothing_is_overwritten(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"))
    store = open_store(spec.store)
    assert check_campaign(spec, store) is False
    before = store.get(Layout("t").campaign_json)
    changed = make_spec(data_dir, spec.store, model={"num_layers": 3}, evals=[{"name": "sw", "stride": 8, "seq_len": 64}])
    with pytest.raises(CampaignChanged, match=r"changed: evals, model.num_layers"):
        check_campaign(changed, store)
    assert store.get(Layout("t").campaign_json) == before
    moved = make_spec(data_dir, spec.store, cluster={"cpu_threads": 2}, checkpoint_every_s=30)
    assert check_campaign(moved, store) is True  # where and how often it runs is not the campaign


def test_failed_training_is_reported_not_retried(ray_local, data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[5], train={"artifact_limit_bytes": 1000, "max_steps": 1})
    report = Driver(spec, log=lambda _: None).run()
    assert list(report.failed) == [Unit.train(5)]
    assert "artifact_limit_bytes" in report.failed[Unit.train(5)]
    assert report.blocked == [Unit.eval(5, "sw")]
    states = [(e["unit"], e["state"]) for e in Ledger(open_store(spec.store), Layout("t"), "x").events() if e["event"] == "state"]
    assert states == [("train/5", "RUNNING"), ("train/5", "FAILED")]


def test_ttt_unit_on_two_gpus_and_its_app_error(ray_local, data_dir, tmp_path):
    """A TTT recipe with ttt.gpus: 2 runs as one unit on a 2-rank Ray Train group and gives the bits
    of the same group run without Ray; a recipe that cannot run is FAILED once, with its message."""
    from tests.workers.helpers import commit_random_model
    from workers.evaluate import run_eval

    ttt = {"kind": "ttt", "chunk_tokens": 600, "epochs": 1, "lr": 0.01, "batch_seqs": 4, "gpus": 2}
    evals = [
        {"name": "ttt2", "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": [ttt, {"kind": "sliding"}]},
        {"name": "bad", "seq_len": 64, "stride": 16, "passes": [{**ttt, "params": ["nothing.*"]}, {"kind": "sliding"}]},
    ]
    over = {"seeds": [1], "evals": evals, "data": {"val_tokens": 2000}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, "ttt2", ref.store)
    spec = make_spec(data_dir, str(tmp_path / "store"), **over)
    commit_random_model(spec, 1)

    report = Driver(spec, log=lambda _: None).run()
    assert list(report.failed) == [Unit.eval(1, "bad", 0)]
    assert "match no parameter" in report.failed[Unit.eval(1, "bad", 0)]
    store, layout = open_store(spec.store), Layout("t")
    got = store.get_json(layout.result(1, "ttt2"))
    assert (got["nll_sum"], got["val_bpb"]) == (expected["nll_sum"], expected["val_bpb"])
    events = Ledger(store, layout, "x").events()
    placed = [e for e in events if e["event"] == "placed" and e["unit"] == "eval/1/ttt2/0"]
    assert sorted(e["rank"] for e in placed) == [0, 1] and len({e["pid"] for e in placed}) == 2
    states = [e["state"] for e in events if e.get("unit") == "eval/1/bad/0" and e["event"] == "state"]
    assert states == ["RUNNING", "FAILED"]  # an application error is not retried


def test_pick_evals_largest_first_without_starving_a_group():
    ttt = Unit.eval(1, "ttt4", 0)
    shards = [Unit.eval(1, "slot", k) for k in range(6)]
    big = Unit.eval(2, "ttt16", 0)
    gpus = {"ttt4": 4, "slot": 1, "ttt16": 16}

    def pick(pending, free, capacity=8):
        return pick_evals(pending, lambda u: gpus[u.recipe], free, capacity)

    assert pick(shards + [ttt], 8) == [ttt] + shards[:4]  # the group first, shards fill around it
    assert pick(shards + [ttt], 3) == []  # 3 free GPUs wait for the group rather than go to shards
    assert pick(shards, 3) == shards[:3]
    assert pick([big] + shards, 2) == shards[:2]  # a unit bigger than the cluster does not block others
    assert pick([big] + shards, 8) == shards[:6]  # ... and is never launched: it waits for capacity
    assert pick(shards, 0, capacity=0) == []


def test_state_machine():
    t = UnitTracker()
    u = Unit.eval(1, "sw")
    t.add(u)
    t.move(u, UnitState.RUNNING)
    t.move(u, UnitState.INTERRUPTED)
    t.move(u, UnitState.PENDING)
    t.move(u, UnitState.RUNNING)
    t.move(u, UnitState.DONE)
    with pytest.raises(IllegalTransition, match="DONE → RUNNING"):
        t.move(u, UnitState.RUNNING)
    assert u.id == "eval/1/sw/0" and Unit.train(3).id == "train/3"
    layout = Layout("c")
    assert Unit.eval(1, "sw", 2).commit_key(layout) == "c/seeds/1/eval/sw/shard-2/done.json"
    assert Unit.train(3).commit_key(layout) == "c/seeds/3/train/manifest.json"
