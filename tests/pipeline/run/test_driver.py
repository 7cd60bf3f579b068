import json
import re
import time

import pytest
import yaml

from pipeline.cli import main
from pipeline.run.driver import CampaignChanged, Driver, check_campaign
from pipeline.run.scheduler import Attempt, Scheduler
from pipeline.records.ledger import Ledger
from pipeline.store import Layout, open_store
from pipeline.records.units import IllegalTransition, Unit, UnitState, UnitTracker
from tests.conftest import make_spec


def write_spec(path, spec):
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def test_campaign_end_to_end_then_rerun_skips_everything(ray_local, data_dir, tmp_path, capsys):
    spec = make_spec(
        data_dir, str(tmp_path / "store"), seeds=[1, 2, 3], results_dir=str(tmp_path / "results"), train={"max_steps": 20}
    )
    f = write_spec(tmp_path / "c.yaml", spec)
    assert main(["run", str(f)]) == 0
    summary = json.loads((tmp_path / "results" / "t" / "summary.json").read_text())
    sw = summary["evals"]["sw"]
    assert sw["complete"] and sw["n"] == 3 and sw["std_ddof"] == 1
    for r in sw["seeds"].values():
        assert r["val_bpb"] < r["unigram_bpb"], (r["val_bpb"], r["unigram_bpb"])  # a few steps already beat a unigram model
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
    # Each eval task computed on the GPU Ray assigned to it, although worker processes are reused
    # across shards: Ray leaves the process's CUDA mask alone and the task picks its GPU by id.
    shards = [e for e in events if e["event"] == "placed" and e["unit"].startswith("eval/")]
    assert all(e["cuda_index"] == int(e["gpu_ids"][0]) and e["cuda_visible"] is None for e in shards)
    assert len({e["gpu_ids"][0] for e in shards}) > 1
    assert all(e["version"] == 1 for e in events)
    # the groups ran without Ray Train's preemption watcher (pipeline/run/tasks.py RAY_TRAIN_DEFAULTS)
    actors = {a["ActorClassName"] for a in ray_local._private.state.actors().values()}
    assert "TrainController" in actors and "PreemptionWatcher" not in actors
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


def _scheduler(pending: list[Unit], gpus: dict[str, float], running: list[Unit] = ()) -> Scheduler:
    sched = Scheduler(lambda u: 8.0 if u.kind == "train" else gpus[u.recipe])
    for u in [*pending, *running]:
        sched.add(u, UnitState.PENDING)
    for k, u in enumerate(running):
        sched.started(k, Attempt(u, f"a{k}", 0.0, sched.slots(u)))
    return sched


def test_scheduler_evals_largest_first_without_starving_a_group():
    ttt = Unit.eval(1, "ttt4", 0)
    shards = [Unit.eval(1, "slot", k) for k in range(6)]
    big = Unit.eval(2, "ttt16", 0)
    gpus = {"ttt4": 4, "slot": 1, "ttt16": 16, "busy": 1}

    def pick(pending, free, capacity=8):
        busy = [Unit.eval(9, "busy", k) for k in range(capacity - free)]  # running shards hold the rest
        return _scheduler(pending, gpus, busy).launches(capacity)

    assert pick(shards + [ttt], 8) == [ttt] + shards[:4]  # the group first, shards fill around it
    assert pick(shards + [ttt], 3) == []  # 3 free GPUs wait for the group rather than go to shards
    assert pick(shards, 3) == shards[:3]
    assert pick([big] + shards, 2) == shards[:2]  # a unit bigger than the cluster does not block others
    assert pick([big] + shards, 8) == shards[:6]  # ... and is never launched: it waits for capacity
    assert pick(shards, 0, capacity=0) == []
    sched = _scheduler([big] + shards, gpus)
    assert list(sched.too_big(8)) == [(16, 1, big)] and sched.launchable(8) and not sched.launchable(0)
    assert sorted(sched.too_big(0)) == [(1, 6, shards[0]), (16, 1, big)] and sched.pending_of(1) == 6  # one entry per size


def test_scheduler_trains_first_and_retry_backoff():
    trains = [Unit.train(s) for s in (2, 0, 1)]
    shards = [Unit.eval(0, "slot", k) for k in range(12)]
    sched = _scheduler(trains + shards, {"slot": 1})
    first = sched.launches(16)
    assert first == [Unit.train(0), Unit.train(1)]  # seed order; two 8-GPU groups fill 16 GPUs
    for k, u in enumerate(first):
        sched.started(("t", k), Attempt(u, "a", 0.0, 8))
    assert sched.launches(16) == []  # the third group waits; no shard takes its GPUs
    att = sched.ended(("t", 0))
    sched.move(att.unit, UnitState.INTERRUPTED)
    sched.move(att.unit, UnitState.PENDING, not_before=time.monotonic() + 3600)  # backing off
    assert sched.launches(16) == [Unit.train(2)]  # the backed-off one is passed over, not lost
    sched.started("t2", Attempt(Unit.train(2), "b", 0.0, 8))
    later = time.monotonic() + 7200
    assert sched.launches(16, now=later) == []  # due, but two groups hold the 16 GPUs
    sched.move(sched.ended(("t", 1)).unit, UnitState.DONE)
    assert sched.launches(16, now=later) == [Unit.train(0)]
    sched.started("t0", Attempt(Unit.train(0), "c", 0.0, 8))
    assert sched.launches(16, now=later) == []  # launched once, not twice; shards wait for the GPUs


def test_groups_run_on_one_node_and_gpus_gather_on_a_node_for_them():
    """Capacity per node: an 8-GPU training on 1×8 + 4×1 GPUs fits only the 8-GPU node; on 2×4 it
    waits, saying why (unless cluster.groups_span_nodes); a 4-GPU TTT unit starts only when one
    node has 4 free, and 1-GPU shards do not take the GPUs that gather for it."""
    from pipeline.run.scheduler import Capacity

    train, ttt = Unit.train(1), Unit.eval(1, "ttt4", 0)
    shards = [Unit.eval(1, "slot", k) for k in range(6)]
    gpus = {"train": 8, "ttt4": 4, "slot": 1}

    def sched(units):
        s = Scheduler(lambda u: gpus["train" if u.kind == "train" else u.recipe])
        for u in units:
            s.add(u, UnitState.PENDING)
        return s

    two_fours = Capacity((4.0, 4.0))
    assert sched([train]).launches(two_fours) == [] and not sched([train]).launchable(two_fours)
    assert list(sched([train]).too_big(two_fours)) == [(8, 1, train)]
    assert two_fours.says(8) == ("the largest node has 4 of the cluster's 8 (a group runs on one node; "
                                 "cluster.groups_span_nodes lets it spread)")
    assert Capacity((4.0, 4.0)).says(1) == "the cluster has 8" and Capacity((4.0,)).says(8) == "the cluster has 4"
    assert sched([train]).launches(Capacity((4.0, 4.0), span=True)) == [train]  # allowed to spread
    assert sched([train]).launches(Capacity((8.0, 1.0, 1.0, 1.0, 1.0))) == [train]
    assert sched([train]).launches(8) == [train]  # a bare number is one node
    # per-node free GPUs (4 shards run, 2 on each node): 4 free but 2 + 2 → the TTT unit gathers,
    # no shard jumps ahead; once one node has 4 free it starts and a shard takes the last GPU
    def running(units, busy):
        held = [Unit.eval(9, "slot", k) for k in range(busy)]
        s = sched(held + units)
        for k, u in enumerate(held):
            s.started(("busy", k), Attempt(u, "a", 0.0, 1.0))
        return s

    assert running([ttt] + shards, 4).launches(Capacity((4.0, 4.0), free=(2.0, 2.0))) == []
    assert running([ttt] + shards, 3).launches(Capacity((4.0, 4.0), free=(4.0, 1.0))) == [ttt] + shards[:1]
    assert running(shards, 4).launches(Capacity((4.0, 4.0), free=(2.0, 2.0))) == shards[:4]  # 1-GPU shards go anywhere


def test_spanned_groups_are_named_in_the_report():
    from pipeline.report.provenance import spanned_groups

    ev = [{"event": "placed", "unit": "train/1", "attempt": "a", "rank": r, "node_id": n} for r, n in enumerate("xxyy")]
    ev += [{"event": "placed", "unit": "train/2", "attempt": "b", "rank": r, "node_id": "z"} for r in range(4)]
    assert spanned_groups(ev) == ["train/1 (attempt a): 4 ranks on 2 nodes"]


def test_group_placement_is_strict_pack_unless_spreading_is_allowed():
    from pipeline.run.tasks import group_placement

    assert group_placement(8, span=False) == "STRICT_PACK" and group_placement(1, span=True) == "STRICT_PACK"


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


def test_a_unit_the_cluster_cannot_hold_waits_then_the_run_ends_with_it_pending(ray_local, data_dir, tmp_path, capsys):
    """A TTT unit on 8 GPUs, a cluster of 4: it waits wait_for_capacity_s saying what for, every
    other unit finishes, the run exits 1 with the unit PENDING, and a re-run picks it up."""
    from tests.workers.helpers import commit_random_model

    ttt8 = {"kind": "ttt", "chunk_tokens": 600, "epochs": 1, "batch_seqs": 4, "gpus": 8}
    evals = [
        {"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8},
        {"name": "ttt8", "seq_len": 64, "stride": 16, "passes": [ttt8, {"kind": "sliding"}]},
    ]
    spec = make_spec(
        data_dir, str(tmp_path / "store"), seeds=[1], evals=evals, data={"val_tokens": 2000},
        results_dir=str(tmp_path / "results"), cluster={"wait_for_capacity_s": 2},
    )
    commit_random_model(spec, 1)
    f = write_spec(tmp_path / "c.yaml", spec)
    assert main(["run", str(f)]) == 1
    out = capsys.readouterr().out
    assert "eval/1/ttt8/0 waits for 8 GPUs; the cluster has 4" in out
    assert "PENDING eval/1/ttt8/0 waits for 8 GPUs" in out
    store, layout = open_store(spec.store), Layout("t")
    assert store.exists(layout.result(1, "sw")) and not store.exists(layout.result(1, "ttt8"))
    states = [e["state"] for e in Ledger(store, layout, "x").events() if e.get("unit") == "eval/1/ttt8/0"]
    assert states == []  # never launched: Ray would have held it forever
    from pipeline.progress.view import campaign_status

    st = campaign_status(spec, store)  # status, from the store: what was left waiting, and why
    assert st.waiting == {"units of 8 GPUs": "eval/1/ttt8/0 waits for 8 GPUs; the cluster has 4"}
    assert [e.state for e in st.evals] == ["DONE", "PENDING"]
    assert main(["run", str(f)]) == 1  # a re-run picks it up (and waits again: still no 8 GPUs)
    assert "eval/1/ttt8/0 waits for 8 GPUs" in capsys.readouterr().out


def test_a_second_driver_refuses_naming_the_first(data_dir, tmp_path, capsys):
    from pipeline.run.setup import campaign_lease

    spec = make_spec(data_dir, str(tmp_path / "store"))
    f = write_spec(tmp_path / "c.yaml", spec)
    live = campaign_lease(open_store(spec.store), spec)
    live.acquire()  # a driver that is running now
    capsys.readouterr()
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is held by driver" in err[0] and re.search(r"heartbeat \d+ s ago", err[0])  # 0 s, or 1 on a loaded box
    assert main(["run", str(f), "--take-over"]) == 2  # not expired: --take-over does not steal a live lease
    live.release()


def _loop_rank1_raises(config):
    """Rank 0 sits in collectives; rank 1 raises at step 3 (as a kernel abort or a bug would)."""
    import ray.train
    import torch
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    for step in range(100_000):
        if rank == 1 and step == 3:
            raise RuntimeError("rank 1 broke at step 3")
        dist.all_reduce(torch.ones(1))


def _train_rank1_raises(spec_json, seed, store_uri, context, run_id, attempt):
    from pipeline.run.tasks import fit_group as _fit_group
    from pipeline.spec import CampaignSpec

    spec = CampaignSpec.model_validate(spec_json)
    store = open_store(store_uri)
    _fit_group("raises", _loop_rank1_raises, {"attempt": attempt}, 2, 1, "cpu", store, Layout(spec.name).train_error(seed, attempt))
    return {}


def test_a_rank_that_raises_ends_its_group_in_seconds(ray_local, data_dir, tmp_path):
    """Not after the collective's 30-minute timeout: Ray Train ends the group when one rank
    raises; the same error on the retry makes the unit FAILED with that rank's error."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], evals=[])
    report = Driver(spec, log=lambda _: None, train_fn=_train_rank1_raises).run()
    assert "rank 1 broke at step 3" in report.failed[Unit.train(1)]
    assert "the same error" in report.failed[Unit.train(1)]
    ends = [e for e in Ledger(open_store(spec.store), Layout("t"), "x").events() if e.get("state") in ("INTERRUPTED", "FAILED")]
    assert [e["state"] for e in ends] == ["INTERRUPTED", "FAILED"]
    assert all(e["seconds"] < 60 for e in ends), [e["seconds"] for e in ends]  # a hang would be 1800 s
    from pipeline.progress.summary import build_summary

    failed = build_summary(spec, open_store(spec.store))["failed"]["train/1"]
    assert failed["class"] == "unknown" and any("rank 1 broke at step 3" in ln for ln in failed["tail"])


def test_a_driver_races_pipeline_eval_of_the_same_eval(ray_local, data_dir, tmp_path):
    """`pipeline eval` by hand beside a running driver: both score, fenced, and the campaign ends
    with the uninterrupted number."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from tests.workers.helpers import commit_random_model
    from workers.evaluate import run_eval

    ev = {"name": "slot", "seq_len": 64, "stride": 16, "batch_seqs": 1, "shards": 2, "passes": [{"kind": "slot", "steps": 4}]}
    over = {"seeds": [1], "evals": [ev], "data": {"val_tokens": 2000}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, "slot", ref.store, shards=2)
    spec = make_spec(data_dir, str(tmp_path / "store"), **over)
    commit_random_model(spec, 1)
    f = write_spec(tmp_path / "c.yaml", spec)

    by_hand = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "eval", str(f), "--seed", "1", "--recipe", "slot"],
        cwd=Path(__file__).resolve().parents[3], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    result = {}
    driver = threading.Thread(target=lambda: result.update(report=Driver(spec, log=lambda _: None).run()))
    driver.start()
    out, _ = by_hand.communicate(timeout=300)
    driver.join(300)
    assert by_hand.returncode == 0, out.decode()
    assert not result["report"].failed
    store, layout = open_store(spec.store), Layout("t")
    got = store.get_json(layout.result(1, "slot"))
    for k in ("val_bpb", "nll_sum", "tokens", "bytes", "batches"):
        assert got[k] == expected[k], k
    assert got["conflicts"] == []
