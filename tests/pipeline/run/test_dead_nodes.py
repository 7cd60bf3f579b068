"""The driver acts on its own view of dead nodes (pipeline/run/failures.py `Failures.abandon_lost`, issue 22).

A pod that vanishes (its host gone, its network namespace deleted) does not close its
connections: Ray's health check marks its node dead after a few missed checks, but the owner of
a task that ran there hears of it only when gRPC keepalives give up, minutes later. Here a node
of a real multi-node Ray cluster (ray.cluster_utils.Cluster) is frozen with SIGSTOP, which is
what such a host looks like from the others (nothing answers, nothing is refused): the head's
health check is short, so Ray's cluster view marks the node dead in seconds, and the driver must
re-place the eval shard that ran there from that view, not wait for Ray's own error.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.pipeline.run.test_faults import SLOW_SLOT, Background, assert_same_result, events, unit_states, wait_for
from tests.workers.helpers import commit_random_model
from workers.evaluate import run_eval

# Ray marks a node dead after 3 missed checks of 1 s; a frozen node's task errors only after
# minutes (the gRPC keepalive), far beyond what this test waits for a re-placement.
HEALTH = {
    "health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
REPLACED_WITHIN_S = 90.0  # from the node marked dead to the shard placed again: a few looks, not Ray's minutes


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a raylet and the workers it started), from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "_system_config": HEALTH})
    nodes = [c.add_node(num_cpus=2, num_gpus=2) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    frozen: list[int] = []
    yield c, nodes, frozen
    signal_all(frozen, signal.SIGKILL)  # the frozen node's processes: killed, never resumed
    ray.shutdown()
    c.shutdown()


def freeze_under(cluster, spec, unit: str, progressed) -> tuple[dict, float]:
    """Freeze the node of `unit`'s first placed rank once `progressed()`; (its placed event, when
    Ray marked the node dead)."""
    import ray

    _, nodes, frozen = cluster
    placed = wait_for(lambda: [e for e in events(spec) if e["event"] == "placed" and e["unit"] == unit], what=f"{unit} placed")[0]
    wait_for(progressed, what=f"{unit} progress")
    victim = next(n for n in nodes if n.node_id == placed["node_id"])
    frozen += process_tree(victim.all_processes["raylet"][0].process.pid)
    signal_all(frozen, signal.SIGSTOP)
    wait_for(lambda: not next(n for n in ray.nodes() if n["NodeID"] == victim.node_id)["Alive"], what="Ray to mark the node dead")
    return placed, time.time()


def replaced(spec, unit: str, placed: dict, dead_at: float) -> list[dict]:
    """The placed events of `unit`'s next attempt, waited for at most REPLACED_WITHIN_S."""
    def again():
        return [e for e in events(spec) if e["event"] == "placed" and e["unit"] == unit and e["attempt"] != placed["attempt"]]

    out = wait_for(again, timeout=REPLACED_WITHIN_S, what=f"{unit} placed again after its node died")
    print(f"{unit}: placed again {out[0]['time'] - dead_at:.1f} s after Ray marked its node dead")
    return out


def assert_lost_to_a_node_death(spec, unit: str, drivers_view: bool = True) -> None:
    """Interrupted once, as a node death: by the driver's own view (`NodeLost`) where Ray's error
    would come minutes late."""
    assert unit_states(spec, unit) == ["RUNNING", "INTERRUPTED", "PENDING", "RUNNING", "DONE"]
    lost = next(e for e in events(spec) if e.get("unit") == unit and e.get("state") == "INTERRUPTED")
    assert lost["kind"] == "node-death" and lost["class"] == "transient"
    assert "NodeLost" in lost["error"] or not drivers_view, lost["error"]


def test_a_frozen_node_is_replaced_from_the_drivers_view_not_rays_error(cluster, data_dir, tmp_path):
    ev = {**SLOW_SLOT, "shards": 2}
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], evals=[ev], data={"val_tokens": 5000})
    commit_random_model(spec, 1)
    ref = spec.model_copy(update={"store": str(tmp_path / "ref")})
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, "slot", ref.store)

    bg = Background(spec)
    layout, store = Layout(spec.name), open_store(spec.store)
    placed, dead_at = freeze_under(
        cluster, spec, "eval/1/slot/0", lambda: len([k for k in store.list(layout.shard_dir(1, "slot", 0)) if "/seg-" in k]) >= 3,
    )
    assert not store.exists(layout.shard_done(1, "slot", 0)), "the shard finished before its node could be frozen"
    again = replaced(spec, "eval/1/slot/0", placed, dead_at)
    report = bg.join()

    assert not report.failed
    assert again[0]["node_id"] != placed["node_id"]
    assert_lost_to_a_node_death(spec, "eval/1/slot/0")
    assert_same_result(spec, "slot", expected)  # the retry resumed from the segments: the same bits
    assert store.get_json(layout.shard_done(1, "slot", 0))["run"]["resumed_batches"] >= 3


def test_a_frozen_node_under_a_group_frees_its_placement_group(cluster, data_dir, tmp_path):
    """A 2-GPU TTT group on the frozen node: its placement group would be re-created by Ray on the
    only other node and hold its GPUs; the driver removes it, so the retry fits there."""
    ttt = {"kind": "ttt", "chunk_tokens": 500, "epochs": 2, "lr": 0.002, "batch_seqs": 4, "optimizer": "muon", "gpus": 2}
    ev = {"name": "ttt", "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": [ttt, {"kind": "slot", "steps": 30}]}
    over = {"seeds": [1], "evals": [ev], "data": {"val_tokens": 5000}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, "ttt", ref.store)
    spec = make_spec(data_dir, str(tmp_path / "store"), **over)
    commit_random_model(spec, 1)

    bg = Background(spec)
    layout, store = Layout(spec.name), open_store(spec.store)
    placed, dead_at = freeze_under(cluster, spec, "eval/1/ttt/0", lambda: [k for k in store.list(layout.shard_dir(1, "ttt", 0)) if "/state-" in k])
    assert not store.exists(layout.shard_done(1, "ttt", 0)), "the unit finished before its node could be frozen"
    assert placed.get("placement_group")
    again = replaced(spec, "eval/1/ttt/0", placed, dead_at)
    report = bg.join()

    assert not report.failed
    again = [e for e in events(spec) if e["event"] == "placed" and e.get("attempt") == again[0]["attempt"]]
    assert sorted(e["rank"] for e in again) == [0, 1] and placed["node_id"] not in {e["node_id"] for e in again}
    # a group's actors die with their node as soon as Ray marks it dead, so Ray Train's own error
    # may come first: either way the group's placement group is gone and the retry fits
    assert_lost_to_a_node_death(spec, "eval/1/ttt/0", drivers_view=False)
    assert_same_result(spec, "ttt", expected)
    assert store.get_json(layout.shard_done(1, "ttt", 0))["run"]["resumed_chunk"] > 0
