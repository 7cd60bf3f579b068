"""The driver's watch over its pods: a pod no unit uses is stopped, the driver's own pod never."""

from __future__ import annotations

import pytest

from pipeline.pods.campaign import CampaignPods
from pipeline.pods.client import RunPodClient
from pipeline.records.nodes import LABEL_POD_ID


def wait_for(pred, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class GpuHolder:
    def ready(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def pod_cluster(runpod):
    """A Ray cluster of pods: a head that is the driver's pod (no GPUs) and one 2-GPU worker pod."""
    import ray
    from ray.cluster_utils import Cluster

    head, worker, stranger = runpod.add_pod(name="ray-t-head", count=1), runpod.add_pod(name="ray-t-w", count=2), runpod.add_pod(name="ray-t-other")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "labels": {LABEL_POD_ID: head}})
    cluster.add_node(num_cpus=1, num_gpus=2, labels={LABEL_POD_ID: worker})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield head, worker, stranger
    ray.shutdown()
    cluster.shutdown()


def test_an_idle_pod_of_the_campaign_is_stopped_and_the_drivers_own_pod_is_not(runpod, pod_cluster):
    import ray

    head, worker, stranger = pod_cluster
    clock, log = Clock(), []
    pods = CampaignPods.for_cluster(idle_stop_min=10, log=log.append)
    assert pods is not None and pods.own_pod == head
    pods.stopper.clock = clock

    holder = ray.remote(num_gpus=1)(GpuHolder).remote()
    ray.get(holder.ready.remote())  # a unit holds one of the worker's GPUs: not idle
    pods.look()
    clock.t = 11 * 60
    assert pods.look() == []
    ray.kill(holder)
    wait_for(lambda: ray.available_resources().get("GPU") == 2)  # the unit is gone, its GPU free
    clock.t = 12 * 60
    assert pods.look() == []  # idle from now on
    clock.t = 23 * 60
    assert pods.look() == [worker]  # idle for idle_stop_min: stopped
    assert runpod.pods[worker]["desiredStatus"] == "EXITED" and runpod.pods[head]["desiredStatus"] == "RUNNING"
    assert runpod.pods[stranger]["desiredStatus"] == "RUNNING"  # not in this cluster: not ours to stop
    assert any("no unit used it for" in line for line in log)
    lines = pods.still_billing()
    assert len(lines) == 1 and head in lines[0] and "this driver's pod" in lines[0]


def test_no_key_or_no_pod_nodes_means_no_watch(ray_local, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert CampaignPods.for_cluster(10, print) is None
