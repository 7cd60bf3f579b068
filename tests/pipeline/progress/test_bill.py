"""One cost model: the bill counts every second of every watched node at its own price (an idle head
pod with no Ray GPUs included), the budget stops new work on that bill, and `pipeline cost` and the
budget give the same dollars for the same ledger."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import yaml

from bench.fake_units import fake_eval, fake_train
from pipeline.cli import RAY_JOB_ENV_VAR, main
from pipeline.run.driver import Driver
from pipeline.run.executor import ThreadExecutor
from pipeline.progress.budget import Budget, Rates, Work, still_billing
from pipeline.run.setup import stop_command
from pipeline.progress.cost import AttemptCost, NodeBill, attempt_cost, cost_report
from pipeline.records.nodes import (
    LABEL_GPU_COUNT, LABEL_GPU_TYPE, LABEL_POD_ID, LABEL_USD_PER_HOUR, NodeIdentity, node_identity, spec_node,
)
from pipeline.report.timeline import timeline
from pipeline.spec import Pricing
from pipeline.store import Layout, open_store
from tests.conftest import make_spec

PRICING = {"gpu_type": "H100", "usd_per_gpu_hour": 3.0}
HEAD_USD_H = 21.52  # an 8×H100 pod, its Ray node started with no GPUs: it bills, no unit holds it


def ray_node(node_id: str, pod: str, gpus: float, usd_h: float, pod_gpus: int, gpu_type: str = "H100") -> dict:
    """An entry of `ray.nodes()` for a pod joined by `pipeline pods bootstrap` (its labels)."""
    labels = {LABEL_POD_ID: pod, LABEL_GPU_TYPE: gpu_type, LABEL_GPU_COUNT: str(pod_gpus), LABEL_USD_PER_HOUR: f"{usd_h:.4f}"}
    return {"NodeID": node_id, "Alive": True, "Resources": {"GPU": gpus}, "Labels": labels}


HEAD = ray_node("nh", "head-pod", 0.0, HEAD_USD_H, 8)
PODS = [HEAD, ray_node("n1", "pod-h100", 1.0, 2.69, 1), ray_node("n2", "pod-a100", 1.0, 1.64, 1, "A100")]


class PodExecutor(ThreadExecutor):
    """Fake units in threads, on a cluster of labelled pods of different prices."""

    def __init__(self, fns, nodes: list[dict]):
        super().__init__(fns, gpus=sum(n["Resources"]["GPU"] for n in nodes))
        self._nodes = nodes

    def nodes(self) -> list[dict]:
        return self._nodes


def identity(n: dict) -> dict:
    return node_identity(n, Pricing(**PRICING)).as_dict()


def put_events(store, layout, events: list[dict]) -> None:
    for i, e in enumerate(events):
        store.put_json(f"{layout.events}/{int(e['time'] * 1e9):020d}-{i:08x}.json", {"version": 1, **e})


def history(t0: float) -> list[dict]:
    """An earlier driver run on four pods of different prices (the head and an L4 idle throughout),
    one of them dying; then a `pipeline eval` by hand that no driver watched."""
    l4 = ray_node("n3", "pod-l4", 1.0, 0.44, 1, "L4")
    nodes = [identity(n) for n in [*PODS, l4]]
    died = [dict(n, alive=False) if n["node_id"] == "n2" else n for n in nodes]

    def st(t, unit, state, attempt, run="old", **kw):
        return {"time": t0 + t, "run": run, "event": "state", "unit": unit, "state": state, "attempt": attempt, **kw}

    def placed(t, unit, attempt, node):
        return {"time": t0 + t, "run": "old", "event": "placed", "unit": unit, "attempt": attempt, "node_id": node}

    return [
        {"time": t0, "run": "old", "event": "cluster", "nodes": nodes},
        st(10, "eval/1/sw/0", "RUNNING", "a1", gpus=1), placed(11, "eval/1/sw/0", "a1", "n1"),
        st(610, "eval/1/sw/0", "DONE", "a1", batches=10),
        st(620, "eval/1/sw/1", "RUNNING", "a2", gpus=1), placed(621, "eval/1/sw/1", "a2", "n2"),
        {"time": t0 + 900, "run": "old", "event": "cluster", "nodes": died},
        st(900, "eval/1/sw/1", "INTERRUPTED", "a2", committed_until=t0 + 800, kind="node-death"),
        {"time": t0 + 1600, "run": "old", "event": "cluster", "nodes": died},  # the run's end
        st(2000, "eval/2/sw/0", "RUNNING", "h1", run="by-hand", gpus=1),
        st(2300, "eval/2/sw/0", "DONE", "h1", run="by-hand", batches=5),
    ]


def test_the_bill_counts_every_node_at_its_own_price_idle_head_included():
    t0 = 1_700_000_000.0
    c = cost_report(history(t0), now=t0 + 5000, default=spec_node(Pricing(**PRICING)))
    # 0-900 s: head + H100 + A100 + L4; 900-1600 s: the A100 is dead
    watched = (HEAD_USD_H + 2.69 + 1.64 + 0.44) * 900 / 3600 + (HEAD_USD_H + 2.69 + 0.44) * 700 / 3600
    by_hand = 300 * 3.0 / 3600  # no driver watched it: its GPU-seconds at the spec's price
    assert c.cluster_usd == pytest.approx(watched, abs=1e-9)
    assert c.total_usd == pytest.approx(watched + by_hand, abs=1e-9)
    units_watched = 600 * 2.69 / 3600 + 280 * 1.64 / 3600
    assert c.idle_usd == pytest.approx(watched - units_watched, abs=1e-9)
    assert c.campaign.lost_usd == pytest.approx(100 * 1.64 / 3600)  # after a2's last commit
    # the report's cost over time is the same bill, as it stood then
    first = (HEAD_USD_H + 2.69 + 1.64 + 0.44) * 900 / 3600
    assert list(c.usd_at(np.array([t0 - 1, t0 + 900, t0 + 1600, t0 + 5000]))) == pytest.approx([0, first, watched, c.total_usd])
    tl = timeline(c, [], 0, now=t0 + 5000)
    assert tl.priced and tl.usd[-1] == pytest.approx(c.total_usd)


def test_attempt_cost_is_priced_by_its_own_nodes():
    a = AttemptCost("eval/1/sw/0", "a1", "r", start=0.0, gpus=2.0, end=100.0, outcome="INTERRUPTED", committed_until=40.0, nodes=["x"])
    nodes = {"x": NodeIdentity("x", True, 8.0, "H100", 2.5, "p", 20.0)}
    b = attempt_cost(a, nodes, now=200.0)
    assert (b.useful_usd, b.lost_usd, b.gpu_s, b.gpu_type) == pytest.approx((80 * 2.5 / 3600, 120 * 2.5 / 3600, 200.0, "H100"))
    assert attempt_cost(a, {}, 200.0, spec_node(Pricing(gpu_type="A100", usd_per_gpu_hour=1.0))).usd == pytest.approx(200 / 3600)


def test_a_pod_whose_ray_node_has_no_gpus_still_bills_its_price():
    n = NodeIdentity.from_dict(identity(HEAD))
    assert (n.gpus, n.hourly_usd) == (0.0, pytest.approx(HEAD_USD_H))
    bill = NodeBill()
    bill.snapshot(0.0, [n])
    assert bill.usd(3600.0) == pytest.approx(HEAD_USD_H) and bill.usd_per_gpu_s() is None
    old = NodeIdentity.from_dict({"node_id": "o", "alive": True, "gpus": 4.0, "gpu_type": "A", "usd_per_gpu_hour": 2.0})
    assert old.hourly_usd == 8.0  # a snapshot from before nodes recorded their $/h


def test_pipeline_cost_and_the_budget_agree_to_the_cent(data_dir, tmp_path, capsys):
    """The driver's bill (earlier runs from the ledger + its own run's nodes) and `pipeline cost`
    on the ledger it leaves: several pods of different prices, an idle head, attempts, a dead node,
    a run no driver watched."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1, 2], budget_usd=1000.0, cluster={"pricing": PRICING})
    store, layout = open_store(spec.store), Layout(spec.name)
    put_events(store, layout, history(time.time() - 10_000))
    report = Driver(spec, log=lambda _: None, train_fn=fake_train, eval_fn=fake_eval,
                    executor=lambda fns: PodExecutor(fns, PODS)).run()
    assert not report.failed and not report.budget and report.done
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["cost", str(f), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert round(cost["total_usd"], 2) == round(report.spent_usd, 2)
    assert cost["total_usd"] == pytest.approx(report.spent_usd, abs=1e-9)
    assert cost["total_usd"] > HEAD_USD_H * 1600 / 3600  # the idle head of the earlier run is in both
    assert main(["cost", str(f)]) == 0
    table = capsys.readouterr().out
    assert "idle nodes" in table and f"${cost['total_usd']:,.2f}" in table


def test_a_budget_the_idle_head_alone_passes_stops_new_work(data_dir, tmp_path):
    """An earlier run's head pod (no Ray GPUs, no unit ever on it) billed an hour: $21.52 of a $20
    budget. Nothing starts, and the line names the pods still billing and how to stop them."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], budget_usd=20.0, cluster={"pricing": PRICING})
    store, layout = open_store(spec.store), Layout(spec.name)
    t0 = time.time() - 7200
    put_events(store, layout, [
        {"time": t0, "run": "old", "event": "cluster", "nodes": [identity(HEAD)]},
        {"time": t0 + 3600, "run": "old", "event": "cluster", "nodes": [identity(HEAD)]},
    ])
    lines: list[str] = []
    report = Driver(spec, log=lines.append, train_fn=fake_train, eval_fn=fake_eval,
                    executor=lambda fns: PodExecutor(fns, PODS)).run()
    assert not report.done and report.budget is not None
    assert report.budget.startswith("budget $20.00: $21.52 spent") and "starting no more units" in report.budget
    stop = next(ln for ln in lines if ln.startswith("budget $20.00"))
    assert "`pipeline pods stop head-pod pod-h100 pod-a100`" in stop


def test_the_projection_pays_for_the_idle_head_too(data_dir, tmp_path):
    """A training projected at max_wallclock_s (120 s) on its 2 GPUs: at the GPUs' own price $0.15,
    at the cluster's burn rate per GPU (the head's $21.52/h spread over the 2 GPUs) $0.86."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], budget_usd=0.5, cluster={"pricing": PRICING})
    report = Driver(spec, log=lambda _: None, train_fn=fake_train, eval_fn=fake_eval,
                    executor=lambda fns: PodExecutor(fns, PODS)).run()
    assert not report.done and report.budget is not None and "$0.86 to finish" in report.budget


def test_the_budget_stops_before_the_next_check_would_pass_it():
    budget = Budget(10.0, log=lambda _: None)
    bill = NodeBill()
    bill.snapshot(0.0, [NodeIdentity.from_dict(identity(HEAD))])
    p = Budget.project(9.99, [], Rates(), 0.0, 0.0, next_check_usd=bill.usd_per_s * 60)  # 60 s of the head: $0.36
    assert p.total_usd == pytest.approx(9.99 + HEAD_USD_H / 60)
    assert not budget.allows(p) and "until the next check" in budget.stopped
    assert Budget(10.0, log=lambda _: None).allows(Budget.project(9.99, [Work("train", "", 2, None)], Rates(), 0.0, 0.0))


def test_the_stop_line_names_what_runs_and_the_commands_that_stop_it(monkeypatch):
    nodes = [NodeIdentity.from_dict(identity(n)) for n in PODS] + [NodeIdentity("local", True, 4.0, "H100", 1.0)]
    monkeypatch.setenv(RAY_JOB_ENV_VAR, json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}))
    line = still_billing(["eval/1/sw/0", "train/2"], nodes, stop_command())
    assert "still running: eval/1/sw/0, train/2; they finish unless stopped: `ray job stop raysubmit_abc`" in line
    assert "pods billing $25.85/h" in line and "`pipeline pods stop head-pod pod-h100 pod-a100`" in line
    assert "1 node(s) not a known pod bill $4.00/h" in line
    monkeypatch.delenv(RAY_JOB_ENV_VAR)
    assert stop_command() == f"`kill -INT {os.getpid()}` (Ctrl-C)"


def test_time_spent_waiting_for_capacity_is_billed(data_dir, tmp_path, capsys):
    """A training that needs 4 GPUs on a cluster of 2 waits (wait_for_capacity_s) and gives up: no
    event happens while it waits, yet its pods billed all along, and the ledger says so."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], train={"world_size": 4},
                     cluster={"pricing": PRICING, "wait_for_capacity_s": 1})
    report = Driver(spec, log=lambda _: None, train_fn=fake_train, eval_fn=fake_eval,
                    executor=lambda fns: PodExecutor(fns, PODS)).run()
    assert report.waiting and not report.done
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["cost", str(f), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    burn = (HEAD_USD_H + 2.69 + 1.64) / 3600
    assert cost["total_usd"] >= burn * 1.0 and cost["idle_usd"] == pytest.approx(cost["total_usd"])
