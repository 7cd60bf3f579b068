"""The driver with its pod watch (pipeline/pods/checks.py) on the local RunPod API: the idle stopper
leaves the pod a waiting unit needs, and an API that hangs neither holds up the loop nor goes
unreported. Fake units on the thread executor (no Ray); Ray's view of the pods is RayNode records."""

from __future__ import annotations

import threading

from bench.fake_units import fake_eval, fake_train
from pipeline.run.driver import Driver
from pipeline.run.executor import ThreadExecutor
from pipeline.records.ledger import Ledger
from pipeline.pods.campaign import CampaignPods
from pipeline.pods.client import RunPodClient
from pipeline.pods.health import RayNode
from pipeline.pods.checks import OUTAGE_KEY
from pipeline.store import Layout, open_store
from tests.conftest import make_spec


def on_pod(spec, gpus: float, pod: str, client: RunPodClient, **kw) -> Driver:
    """A driver whose thread executor runs on one pod of the fake RunPod API, its GPUs free
    (nothing runs on it), and whose pod watch is that pod's."""
    node = RayNode(ThreadExecutor.NODE_ID, True, gpus, gpus)

    def pods(idle_stop_min, log):
        return CampaignPods(client, idle_stop_min, None, log, every_s=0.05, nodes=lambda: {pod: node})

    return Driver(spec, executor=lambda fns: ThreadExecutor(fns, gpus), pods=pods, **kw)


def test_the_pod_a_waiting_unit_needs_is_not_stopped_while_it_waits(runpod, data_dir, tmp_path):
    """A 2-GPU training on a 1-GPU pod waits for capacity far longer than idle_stop_min: the pod
    stays (stopping it would leave the unit 0 of its 2 GPUs) and the run ends with the unit waiting."""
    pod = runpod.add_pod(name="ray-t-w", count=1)
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], cluster={"wait_for_capacity_s": 2, "idle_stop_min": 0.001})
    lines: list[str] = []
    client = RunPodClient.from_env(max_attempts=1)
    report = on_pod(spec, 1, pod, client, log=lines.append, train_fn=fake_train, eval_fn=fake_eval).run()
    assert report.waiting == {"units of 2 GPUs": "train/1 waits for 2 GPUs; the cluster has 1"}
    assert runpod.pods[pod]["desiredStatus"] == "RUNNING" and "podStop" not in runpod.ops()
    assert any(pod in ln and "kept" in ln for ln in lines), lines


def test_a_hanging_runpod_api_does_not_hold_up_the_campaign_and_is_reported(runpod, data_dir, tmp_path):
    pod = runpod.add_pod(name="ray-t-w", count=4)
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1])
    outage = threading.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "idle pods are not stopped until the API answers" in line:
            outage.set()

    def train(*args):  # the campaign runs on while the API hangs: training ends once the outage is seen
        assert outage.wait(30), "no outage reported"
        return fake_train(*args)

    runpod.hold()  # the API answers nothing for the whole run
    client = RunPodClient.from_env(timeout_s=0.2, max_attempts=1)
    report = on_pod(spec, 4, pod, client, log=log, train_fn=train, eval_fn=fake_eval).run()
    assert not runpod.gate.is_set()  # still hanging: every unit ran and merged without it
    assert not report.failed and len(report.done) == 1 + 4
    assert sum("idle pods are not stopped until the API answers" in ln for ln in lines) == 1
    events = [e for e in Ledger(open_store(spec.store), Layout(spec.name), "check").events() if e.get("key") == OUTAGE_KEY]
    assert [bool(e["what"]) for e in events] == [True, False]  # shown in `pipeline status` while it lasted
