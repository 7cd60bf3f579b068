"""Ledger arithmetic on hand-made event sets: useful, lost and idle dollars."""

from __future__ import annotations

import pytest

from pipeline.progress.cost import cost_report
from pipeline.records.nodes import LABEL_GPU_COUNT, LABEL_GPU_TYPE, LABEL_POD_ID, LABEL_USD_PER_HOUR, NodeIdentity, node_identity
from pipeline.spec import Pricing

H100 = {"node_id": "n1", "alive": True, "gpus": 8.0, "gpu_type": "H100", "usd_per_gpu_hour": 3.6, "pod_id": "pod-a"}


def ev(t, run="r1", **body):
    return {"version": 1, "time": float(t), "run": run, **body}


def state(t, unit, st, attempt, run="r1", **kw):
    return ev(t, run, event="state", unit=unit, state=st, attempt=attempt, **kw)


def placed(t, unit, attempt, node="n1", run="r1"):
    return ev(t, run, event="placed", unit=unit, attempt=attempt, node_id=node)


def test_done_attempts_are_useful_and_priced_by_their_node():
    events = [
        ev(0, event="cluster", nodes=[H100]),
        state(0, "train/1", "RUNNING", "a1", gpus=8), placed(1, "train/1", "a1"),
        state(600, "train/1", "DONE", "a1", seconds=600),
        state(600, "eval/1/slot/0", "RUNNING", "a2", gpus=1), placed(601, "eval/1/slot/0", "a2"),
        state(1600, "eval/1/slot/0", "DONE", "a2", batches=100),
        ev(1600, event="cluster", nodes=[{**H100, "alive": False}]),
    ]
    c = cost_report(events, now=2000)
    per_gpu_s = 3.6 / 3600
    assert c.by_seed_recipe[(1, "train")].useful_usd == pytest.approx(600 * 8 * per_gpu_s)
    assert c.by_seed_recipe[(1, "slot")].useful_usd == pytest.approx(1000 * per_gpu_s)
    assert c.campaign.lost_usd == 0
    # the pod was up 1600 s with 8 GPUs; the eval held 1 of them for 1000 s
    assert c.cluster_usd == pytest.approx(1600 * 8 * per_gpu_s)
    assert c.idle_usd == pytest.approx((1600 * 8 - 600 * 8 - 1000) * per_gpu_s)
    assert c.total_usd == pytest.approx(1600 * 8 * per_gpu_s)
    assert c.gpu_types == ["H100"]


def test_work_after_the_last_commit_of_a_dead_attempt_is_lost():
    events = [
        ev(0, event="cluster", nodes=[H100]),
        state(0, "eval/1/slot/0", "RUNNING", "a1", gpus=1), placed(0, "eval/1/slot/0", "a1"),
        state(300, "eval/1/slot/0", "INTERRUPTED", "a1", committed_until=240.0, kind="node-death"),
        state(305, "eval/1/slot/0", "PENDING", None),
        state(310, "eval/1/slot/0", "RUNNING", "a2", gpus=1), placed(310, "eval/1/slot/0", "a2"),
        state(500, "eval/1/slot/0", "DONE", "a2", batches=10),
        state(500, "eval/1/ttt/0", "RUNNING", "a3", gpus=2), placed(500, "eval/1/ttt/0", "a3"),
        state(560, "eval/1/ttt/0", "FAILED", "a3", reason="ValueError: bad"),
    ]
    c = cost_report(events, now=600)
    p = 3.6 / 3600
    slot = c.by_seed_recipe[(1, "slot")]
    assert slot.useful_usd == pytest.approx((240 + 190) * p)
    assert slot.lost_usd == pytest.approx(60 * p)
    ttt = c.by_seed_recipe[(1, "ttt")]
    assert ttt.useful_usd == 0 and ttt.lost_usd == pytest.approx(60 * 2 * p)
    assert c.campaign.attempts == 3


def test_an_attempt_whose_driver_died_ends_with_its_run_and_keeps_what_it_committed():
    events = [
        state(0, "eval/2/sw/1", "RUNNING", "a1", run="dead", gpus=1), placed(0, "eval/2/sw/1", "a1", run="dead"),
        ev(100, run="dead", event="state", unit="eval/2/sw/0", state="DONE", attempt="x"),
        state(200, "eval/2/sw/1", "RUNNING", "a2", run="live", gpus=1),
    ]
    default = NodeIdentity("spec", True, 0, "A100", 1.8)
    c = cost_report(events, now=260, live_runs={"live"}, default=default, committed=lambda a: 70.0 if a.attempt == "a1" else None)
    p = 1.8 / 3600
    a1, a2 = c.attempts
    assert (a1.end, a1.committed_until) == (100.0, 70.0)
    assert a2.end is None  # still running under the live driver: its time so far, none of it lost
    line = c.by_seed_recipe[(2, "sw")]
    assert line.useful_usd == pytest.approx((70 + 60) * p) and line.lost_usd == pytest.approx(30 * p)
    assert c.idle_usd is None  # no driver recorded the cluster


def test_node_labels_of_a_pod_set_its_price():
    node = {
        "NodeID": "n9", "Alive": True, "Resources": {"GPU": 8.0},
        "Labels": {LABEL_POD_ID: "abc", LABEL_GPU_TYPE: "H100 SXM", LABEL_GPU_COUNT: "8", LABEL_USD_PER_HOUR: "21.52"},
    }
    n = node_identity(node, Pricing(gpu_type="local", usd_per_gpu_hour=1.0))
    assert (n.pod_id, n.gpu_type, n.gpus) == ("abc", "H100 SXM", 8.0)
    assert n.usd_per_gpu_hour == pytest.approx(21.52 / 8)
    bare = node_identity({"NodeID": "n0", "Alive": True, "Resources": {"GPU": 4.0}}, Pricing(gpu_type="local", usd_per_gpu_hour=1.0))
    assert (bare.pod_id, bare.gpu_type, bare.usd_per_gpu_hour) == (None, "local", 1.0)
