"""Idle = no unit can use it: a pod whose GPUs a waiting unit gathers, or that a PENDING unit could
run on, is kept past idle_stop_min; a stop never leaves the cluster fewer GPUs than a waiting unit
needs. CampaignPods on the local RunPod API with a fake clock and Ray's view as RayNode records."""

from __future__ import annotations

from pipeline.pods.campaign import CampaignPods
from pipeline.pods.client import RunPodClient
from pipeline.pods.health import RayNode
from pipeline.pods.idle import Demand


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def campaign_pods(runpod, nodes: dict[str, RayNode], own: str | None = None):
    clock, log = Clock(), []
    pods = CampaignPods(RunPodClient.from_env(), 10, own, log.append, clock=clock, nodes=lambda: nodes)
    return pods, clock, log


def test_a_2_gpu_unit_waiting_to_gather_gpus_keeps_its_pod_past_idle_stop_min(runpod):
    head, w = runpod.add_pod(name="ray-t-head", count=1), runpod.add_pod(name="ray-t-w", count=2)
    nodes = {head: RayNode("nh", True, 0, 0), w: RayNode("nw", True, 2, 2)}  # w's GPUs all free
    pods, clock, log = campaign_pods(runpod, nodes, own=head)
    gathering = Demand.of(2, {2: 1})  # one PENDING 2-GPU unit; the cluster has 2 GPUs
    for minute in (0, 11, 30):
        clock.t = minute * 60
        assert pods.look(gathering) == []
    assert runpod.pods[w]["desiredStatus"] == "RUNNING"
    clock.t = 31 * 60  # the unit ran elsewhere or gave up: nothing waits now; idle from here on
    assert pods.look(Demand(2)) == []
    clock.t = 41 * 60
    assert pods.look(Demand(2)) == [w]  # idle for idle_stop_min since no unit could use it
    assert runpod.pods[w]["desiredStatus"] == "EXITED" and runpod.pods[head]["desiredStatus"] == "RUNNING"


def test_a_group_spanning_pods_keeps_the_gpus_it_gathers_and_a_cpu_pod_is_still_stopped(runpod):
    a, b, cpu = runpod.add_pod(name="ray-t-a", count=1), runpod.add_pod(name="ray-t-b", count=1), runpod.add_pod(name="ray-t-cpu", count=0)
    nodes = {a: RayNode("na", True, 1, 0), b: RayNode("nb", True, 1, 1), cpu: RayNode("nc", True, 0, 0)}
    pods, clock, log = campaign_pods(runpod, nodes)
    pods.look(Demand.of(2, {2: 1}))  # a 1-GPU unit runs on a; a 2-GPU unit gathers b's GPU and a's
    clock.t = 11 * 60
    assert pods.look(Demand.of(2, {2: 1})) == [cpu]
    assert runpod.pods[b]["desiredStatus"] == "RUNNING"
    assert any(b in line and "kept" in line and "fewer than the 2 a waiting unit needs" in line for line in log), log
    clock.t = 30 * 60  # a unit bigger than the cluster waits for GPUs to join: every GPU it has counts
    assert pods.look(Demand.of(2, {8: 3})) == [] and runpod.pods[b]["desiredStatus"] == "RUNNING"


def test_a_pod_stopped_whose_ray_node_lingers_is_not_counted_as_gpus_the_cluster_keeps(runpod):
    gone, b, c = (runpod.add_pod(status="EXITED", name="ray-t-gone", count=1), runpod.add_pod(name="ray-t-b", count=1),
                  runpod.add_pod(name="ray-t-c", count=1))  # fmt: skip
    nodes = {gone: RayNode("ng", True, 1, 1), b: RayNode("nb", True, 1, 1), c: RayNode("nc", True, 1, 1)}
    pods, clock, log = campaign_pods(runpod, nodes)
    demand = Demand.of(3, {2: 1})  # the driver still counts the stopped pod's GPU
    pods.look(demand)
    clock.t = 11 * 60
    assert pods.look(demand) == []  # stopping b or c would leave the 2-GPU unit 1 GPU


def test_a_retry_that_avoids_a_pod_does_not_keep_it_while_another_pod_holds_it(runpod):
    x, y = runpod.add_pod(name="ray-t-x", count=2), runpod.add_pod(name="ray-t-y", count=2)
    nodes = {x: RayNode("nx", True, 2, 2), y: RayNode("ny", True, 2, 2)}
    pods, clock, log = campaign_pods(runpod, nodes)
    demand = Demand.of(4, {2: 1}, avoided=[(2, ("nx",))])  # its attempt failed on x: it goes to y
    pods.look(demand)
    clock.t = 11 * 60
    assert pods.look(demand) == [x]
    assert runpod.pods[y]["desiredStatus"] == "RUNNING"
    del nodes[x]
    assert Demand.of(2, {2: 1}, avoided=[(2, ("ny",))]).can_use(nodes[y], nodes.values()) is not None  # no other pod: y it is


def test_demand_counts_sizes_and_avoids_only_what_every_unit_of_a_size_avoids():
    d = Demand.of(8, {1: 3, 2: 0, 4: 1}, avoided=[(1, ("n1", "n2")), (4, ("n1",))], waiting=[2])
    assert [(n.gpus, n.units, sorted(n.avoid_nodes)) for n in d.needs] == [(1, 3, []), (4, 1, ["n1"]), (2, 1, [])]
    assert d.largest == 4 and Demand(8).largest == 0


def test_a_pod_of_the_cluster_the_project_did_not_rent_is_never_stopped(runpod):
    """Someone bootstrapped their own pod into the cluster (not named ray-<cluster>-): idle or not,
    the driver leaves it alone and says so once; the project's own idle pod beside it is stopped."""
    mine, theirs = runpod.add_pod(name="ray-t-w", count=1), runpod.add_pod(name="alice-notebook", count=1)
    nodes = {mine: RayNode("nm", True, 1, 1), theirs: RayNode("na", True, 1, 1)}
    pods, clock, log = campaign_pods(runpod, nodes)
    for minute in (0, 11, 30):
        clock.t = minute * 60
        stopped = pods.look(Demand(1))
    assert stopped == [] and runpod.pods[mine]["desiredStatus"] == "EXITED"
    assert runpod.pods[theirs]["desiredStatus"] == "RUNNING"
    said = [ln for ln in log if "alice" in ln or theirs in ln]
    assert said == [f"pods: leaving {theirs} alone: in this Ray cluster but not named ray-* (not rented by pipeline)"]
