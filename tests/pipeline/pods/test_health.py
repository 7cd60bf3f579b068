"""Pod health (RunPod status, Ray node, SSH) and the idle stopper, on pods of the local RunPod API."""

from __future__ import annotations

import pytest

from pipeline.pods.client import RunPodClient
from pipeline.pods.health import RayNode, Verdict, pod_health
from pipeline.pods.idle import IdleStopper


def pods_by_id(runpod):
    return {p.id: p for p in RunPodClient.from_env().list_pods()}


@pytest.mark.parametrize("status", ["EXITED", "DEAD", "ERROR", "TERMINATED", "MIGRATING", ""])
def test_a_pod_runpod_does_not_call_running_is_dead(runpod, status):
    pid = runpod.add_pod(status=status)
    h = pod_health(pods_by_id(runpod)[pid], {}, lambda p: None)
    assert h.verdict is Verdict.DEAD and status in h.reason


def test_a_starting_pod_is_starting(runpod):
    pid = runpod.add_pod(status="CREATED")
    assert pod_health(pods_by_id(runpod)[pid], {}).verdict is Verdict.STARTING


def test_a_running_pod_is_alive_in_ray_unjoined_with_ssh_and_dead_without_either(runpod):
    pid = runpod.add_pod()
    pod = pods_by_id(runpod)[pid]
    assert pod_health(pod, {pid: RayNode("n1", True, 8, 6)}).verdict is Verdict.ALIVE
    assert "2/8 GPUs busy" in pod_health(pod, {pid: RayNode("n1", True, 8, 6)}).reason
    probed = []
    assert pod_health(pod, {}, lambda p: probed.append(p.id)).verdict is Verdict.NOT_JOINED and probed == [pid]
    h = pod_health(pod, {pid: RayNode("n1", False, 8, 0)}, lambda p: "connection refused")
    assert h.verdict is Verdict.DEAD and h.reason == "RunPod RUNNING but its Ray node died and SSH fails: connection refused"
    assert pod_health(pod, None).verdict is Verdict.ALIVE  # no Ray view: RunPod's word


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_idle_pods_are_stopped_after_idle_stop_min_and_the_head_last(runpod):
    head, busy, idle = runpod.add_pod(name="head"), runpod.add_pod(name="busy", count=1), runpod.add_pod(name="idle", count=1)
    clock, log = Clock(), []
    stopper = IdleStopper(RunPodClient.from_env(), idle_stop_min=10, head_pod_id=head, clock=clock, log=log.append)
    nodes = {head: RayNode("h", True, 8, 8), busy: RayNode("b", True, 1, 0), idle: RayNode("i", True, 1, 1)}
    assert stopper.tick(list(pods_by_id(runpod).values()), nodes) == []
    clock.t = 9 * 60
    assert stopper.tick(list(pods_by_id(runpod).values()), nodes) == []
    clock.t = 10 * 60
    assert stopper.tick(list(pods_by_id(runpod).values()), nodes) == [idle]  # the head waits: `busy` still works
    assert runpod.pods[idle]["desiredStatus"] == "EXITED" and "no unit used it for 10 min: stopped" in log[0]
    nodes[busy] = RayNode("b", True, 1, 1)  # its unit ended: the campaign is over
    clock.t = 15 * 60
    assert stopper.tick(list(pods_by_id(runpod).values()), nodes) == []
    clock.t = 25 * 60
    assert sorted(stopper.tick(list(pods_by_id(runpod).values()), nodes)) == sorted([head, busy])


def test_a_unit_starting_resets_the_idle_clock_and_a_pod_outside_ray_counts_as_idle(runpod):
    a, b = runpod.add_pod(count=1), runpod.add_pod(count=1)
    clock = Clock()
    stopper = IdleStopper(RunPodClient.from_env(), idle_stop_min=1, clock=clock, log=lambda m: None)
    stopper.tick(list(pods_by_id(runpod).values()), {a: RayNode("a", True, 1, 1)})
    clock.t = 50
    stopper.tick(list(pods_by_id(runpod).values()), {a: RayNode("a", True, 1, 0)})  # a unit runs on a
    clock.t = 61
    assert stopper.tick(list(pods_by_id(runpod).values()), {a: RayNode("a", True, 1, 1)}) == [b]  # b never joined Ray
    clock.t = 120
    assert stopper.tick(list(pods_by_id(runpod).values()), {a: RayNode("a", True, 1, 1)}) == []  # a idle since 61 s
    clock.t = 121
    assert stopper.tick(list(pods_by_id(runpod).values()), {a: RayNode("a", True, 1, 1)}) == [a]


def test_a_failed_stop_is_retried_on_the_next_tick(runpod):
    a = runpod.add_pod(count=1)
    clock, log = Clock(), []
    stopper = IdleStopper(RunPodClient.from_env(max_attempts=1), idle_stop_min=1, clock=clock, log=log.append)
    stopper.tick(list(pods_by_id(runpod).values()), {})
    clock.t = 60
    pods = list(pods_by_id(runpod).values())
    runpod.fail_next(503)
    assert stopper.tick(pods, {}) == [] and "stop failed: RunPod API: podStop: HTTP 503" in log[0]
    assert stopper.tick(pods, {}) == [a]
