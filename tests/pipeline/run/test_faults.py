"""Fault injection on a real multi-node Ray cluster (ray.cluster_utils.Cluster, logical GPUs):
a node dies under an eval shard, a node dies under a training worker, the driver is killed with
SIGKILL. Each time the campaign completes with the numbers of an uninterrupted run, and no unit
that reached DONE is started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml

from pipeline.run.driver import Driver
from pipeline.records.ledger import Ledger
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.evaluate import run_eval

ROOT = Path(__file__).resolve().parents[3]
SLOW_SLOT = {"name": "slot", "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": [{"kind": "slot", "steps": 60}]}


def wait_for(pred, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def events(spec):
    return Ledger(open_store(spec.store), Layout(spec.name), "x").events()


def assert_done_units_never_restarted(spec):
    seen_done = set()
    runs = defaultdict(int)
    for e in events(spec):
        if e.get("state") == "RUNNING":
            assert e["unit"] not in seen_done, f"{e['unit']} ran again after it was DONE"
            runs[e["unit"]] += 1
        elif e.get("state") == "DONE":
            seen_done.add(e["unit"])
    return runs


def assert_same_result(spec, recipe, expected):
    got = open_store(spec.store).get_json(Layout(spec.name).result(1, recipe))
    for k in ("val_bpb", "nll_sum", "tokens", "bytes", "windows", "batches"):
        assert got[k] == expected[k], k


def unit_states(spec, unit):
    return [e["state"] for e in events(spec) if e.get("unit") == unit and e["event"] == "state"]


def node_by_id(cluster, node_id):
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_id)


class Background:
    """Driver.run() in a thread (the driver shares this process's Ray connection)."""

    def __init__(self, spec):
        self.report, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(spec,), daemon=True)
        self.thread.start()

    def _run(self, spec):
        try:
            self.report = Driver(spec, log=lambda _: None).run()
        except BaseException as e:  # noqa: BLE001 - re-raised in join()
            self.error = e

    def join(self, timeout=600):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "driver did not finish"
        if self.error:
            raise self.error
        return self.report


def test_node_dies_under_an_eval_shard(ray_cluster, data_dir, tmp_path):
    ev = {**SLOW_SLOT, "shards": 2}
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], evals=[ev], data={"val_tokens": 5000})
    commit_random_model(spec, 1)  # training is done; this test is about the eval
    ref_spec = spec.model_copy(update={"store": str(tmp_path / "ref")})
    commit_random_model(ref_spec, 1)
    expected = run_eval(ref_spec, 1, "slot", ref_spec.store)

    bg = Background(spec)
    layout, store = Layout(spec.name), open_store(spec.store)
    placed = wait_for(
        lambda: [e for e in events(spec) if e["event"] == "placed" and e["unit"] == "eval/1/slot/0"], what="shard 0 placed"
    )[0]
    wait_for(lambda: len([k for k in store.list(layout.shard_dir(1, "slot", 0)) if "/seg-" in k]) >= 3, what="progress")
    assert not store.exists(layout.shard_done(1, "slot", 0)), "the shard finished before the node could be removed"
    removed_at = time.time()
    ray_cluster.remove_node(node_by_id(ray_cluster, placed["node_id"]))
    report = bg.join()

    assert not report.failed
    assert_same_result(spec, "slot", expected)
    runs = assert_done_units_never_restarted(spec)
    assert runs["eval/1/slot/0"] == 2
    assert unit_states(spec, "eval/1/slot/0") == ["RUNNING", "INTERRUPTED", "PENDING", "RUNNING", "DONE"]
    again = [e for e in events(spec) if e["event"] == "placed" and e["unit"] == "eval/1/slot/0" and e["time"] > removed_at]
    assert again and again[0]["node_id"] != placed["node_id"]
    done = store.get_json(layout.shard_done(1, "slot", 0))
    assert done["run"]["resumed_batches"] >= 3  # it resumed from its segments, not from scratch
    ray_cluster.add_node(num_cpus=2, num_gpus=2)  # give the cluster its node back for the next test
    ray_cluster.wait_for_nodes()


def test_node_dies_under_a_ttt_group(ray_cluster, data_dir, tmp_path):
    """TTT on 2 GPUs: a node holding one of the group's ranks is removed after a chunk state was
    saved. The attempt ends, the driver resumes the unit on a fresh group elsewhere, from the state."""
    ttt = {"kind": "ttt", "chunk_tokens": 500, "epochs": 2, "lr": 0.002, "batch_seqs": 4, "optimizer": "muon", "gpus": 2}
    ev = {"name": "ttt", "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": [ttt, {"kind": "slot", "steps": 30}]}
    over = {"seeds": [1], "evals": [ev], "data": {"val_tokens": 5000}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, "ttt", ref.store)  # the same 2-rank group, no Ray, no fault
    spec = make_spec(data_dir, str(tmp_path / "store"), **over)
    commit_random_model(spec, 1)

    bg = Background(spec)
    layout, store = Layout(spec.name), open_store(spec.store)
    wait_for(lambda: [k for k in store.list(layout.shard_dir(1, "ttt", 0)) if "/state-" in k], what="a TTT state")
    placed = [e for e in events(spec) if e["event"] == "placed" and e["unit"] == "eval/1/ttt/0"]
    assert not store.exists(layout.shard_done(1, "ttt", 0)), "the unit finished before the node could be removed"
    victim = next(e for e in placed if e["rank"] == 1)["node_id"]
    removed_at = time.time()
    ray_cluster.remove_node(node_by_id(ray_cluster, victim))
    report = bg.join()

    assert not report.failed
    assert_same_result(spec, "ttt", expected)
    assert unit_states(spec, "eval/1/ttt/0") == ["RUNNING", "INTERRUPTED", "PENDING", "RUNNING", "DONE"]
    again = [e for e in events(spec) if e["event"] == "placed" and e["unit"] == "eval/1/ttt/0" and e["time"] > removed_at]
    assert sorted(e["rank"] for e in again) == [0, 1] and victim not in {e["node_id"] for e in again}
    print(f"ttt group: running again {max(e['time'] for e in again) - removed_at:.1f}s after the node was removed")
    run = store.get_json(layout.shard_done(1, "ttt", 0))["run"]
    assert run["resumed_chunk"] > 0 and run["resumed_batches"] > 0  # from the saved state, not from scratch
    ray_cluster.add_node(num_cpus=2, num_gpus=2)
    ray_cluster.wait_for_nodes()


def train_spec(data_dir, store, **over):
    return make_spec(
        data_dir, store, seeds=[1], evals=[],
        train={"world_size": 2, "max_steps": 60, "checkpoint_every_steps": 5, "max_failures": 3}, **over,
    )


def test_node_dies_under_a_training_worker(ray_cluster, data_dir, tmp_path):
    ref = train_spec(data_dir, str(tmp_path / "ref"))
    assert not Driver(ref, log=lambda _: None).run().failed
    ref_manifest = open_store(ref.store).get_json(Layout(ref.name).manifest(1))
    assert ref_manifest["train"]["resumed"] is False

    spec = train_spec(data_dir, str(tmp_path / "store"))
    bg = Background(spec)
    store, layout = open_store(spec.store), Layout(spec.name)

    def first_checkpoint():
        commits = [k for k in store.list(f"{layout.train_dir(1)}/ckpt") if k.endswith("commit.json")]
        return store.get_json(commits[0]) if commits else None

    ckpt = wait_for(first_checkpoint, what="a training checkpoint")
    assert not store.exists(layout.manifest(1)), "training finished before the node could be removed"
    ray_cluster.remove_node(node_by_id(ray_cluster, ckpt["node"]))
    report = bg.join()

    assert not report.failed
    m = store.get_json(layout.manifest(1))
    assert m["train"]["resumed"] is True and m["train"]["resumed_at_steps"]
    assert m["train"]["steps"] == 60 and m["train"]["wall_s_total"] >= m["train"]["wall_s"]
    assert m["sha256"] == ref_manifest["sha256"]  # the resumed run's artifact, bit for bit
    assert assert_done_units_never_restarted(spec)["train/1"] == 2  # the driver restarted the group, from the checkpoint
    interrupted = [e for e in events(spec) if e.get("unit") == "train/1" and e.get("state") == "INTERRUPTED"]
    assert [e["kind"] for e in interrupted] == ["node-death"]
    nodes: dict[str, set] = {}  # each attempt's ranks on one node (STRICT_PACK), the retry on another
    for e in events(spec):
        if e.get("event") == "placed" and e.get("unit") == "train/1":
            nodes.setdefault(e["attempt"], set()).add(e["node_id"])
    assert len(nodes) == 2 and all(len(n) == 1 for n in nodes.values()) and len(set.union(*nodes.values())) == 2
    ray_cluster.add_node(num_cpus=2, num_gpus=2)
    ray_cluster.wait_for_nodes()


def test_driver_killed_mid_campaign(ray_cluster, data_dir, tmp_path):
    ev = {**SLOW_SLOT, "shards": 2}
    # 1-worker trainings: what is proven is the driver's death and resume (groups' deaths: the tests above)
    over = {"seeds": [1, 2], "evals": [ev], "data": {"val_tokens": 2000}, "train": {"max_steps": 8, "world_size": 1}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    assert not Driver(ref, log=lambda _: None).run().failed

    spec = make_spec(data_dir, str(tmp_path / "store"), results_dir=str(tmp_path / "results"), **over)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "pipeline", "run", str(f), "--address", ray_cluster.address]
    store, layout = open_store(spec.store), Layout(spec.name)
    log = tmp_path / "driver.log"
    with log.open("w") as out_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out_file, stderr=subprocess.STDOUT)

    def a_done_shard():
        if proc.poll() is not None:  # the driver ended before any shard was DONE: say why, at once
            raise AssertionError(f"driver exited {proc.returncode} before a DONE shard:\n{log.read_text()[-3000:]}")
        return [k for k in store.list(f"{spec.name}/seeds") if k.endswith("/done.json")]

    try:
        # once an eval shard is DONE (it must not run again): freeze the driver, so what the store
        # holds of its own writes (results, merged by the driver only) cannot change, then kill it.
        # The guard is generous: on a loaded 2-core box two trainings and their Ray workers took >120 s.
        try:
            wait_for(a_done_shard, timeout=300, what="a DONE shard")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; the driver printed:\n{log.read_text()[-3000:]}") from None
        os.kill(proc.pid, signal.SIGSTOP)
        merged_before_kill = {s for s in (1, 2) if store.exists(layout.result(s, "slot"))}
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipping" in out.stdout

    for seed in (1, 2):
        a = open_store(ref.store).get_json(Layout(ref.name).result(seed, "slot"))
        b = store.get_json(layout.result(seed, "slot"))
        for k in ("val_bpb", "nll_sum", "tokens", "bytes"):
            assert a[k] == b[k], (seed, k)
        assert store.get_json(layout.manifest(seed))["sha256"] == open_store(ref.store).get_json(Layout(ref.name).manifest(seed))["sha256"]
    runs = assert_done_units_never_restarted(spec)
    assert runs["train/1"] == 1  # DONE before the kill: not run again
    for seed in merged_before_kill:  # a result merged before the kill is read, not merged again
        assert f"result seed {seed}" not in out.stdout
