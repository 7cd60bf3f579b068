"""`pipeline pods watch`'s look on an account shared with colleagues, against the local RunPod API:
only this cluster's pods are stopped or terminated, the rest is named in one line, and a dead pod is
terminated only once it has been seen dead over the grace period (never a stopped or unknown one)."""

from __future__ import annotations

from pipeline.pods.client import RunPodClient
from pipeline.pods.health import DeadGrace, DeathWatch, RayNode
from pipeline.pods.idle import IdleStopper
from pipeline.pods.watch import ClusterScope, PodWatch


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make_watch(clock, log, probe=None, grace=DeadGrace()):
    client = RunPodClient.from_env()
    stopper = IdleStopper(client, idle_stop_min=10, clock=clock, log=log.append)
    return PodWatch(client, ClusterScope("golf"), stopper, DeathWatch(grace, clock), probe, log.append), client


def test_a_colleagues_running_pod_and_another_clusters_are_never_stopped(runpod):
    ours = runpod.add_pod(name="ray-golf-eval-0", count=1)
    colleague = runpod.add_pod(name="alice-notebook", count=1)  # RUNNING, no node in this Ray cluster
    other = runpod.add_pod(name="ray-golf-eval-9", count=1)  # our prefix, but not in this Ray cluster
    stray = runpod.add_pod(name="bobs-box", count=1)  # in this Ray cluster, not rented for it
    clock, log = Clock(), []
    watch, client = make_watch(clock, log)
    nodes = {ours: RayNode("n1", True, 1, 1), stray: RayNode("n2", True, 1, 1)}  # both idle
    for minute in (0, 5, 11, 30):
        clock.t = minute * 60.0
        watch.look(client.list_pods(), nodes)
    assert runpod.pods[ours]["desiredStatus"] == "EXITED"  # idle 10 min: stopped
    assert all(runpod.pods[p]["desiredStatus"] == "RUNNING" for p in (colleague, other, stray))
    [line] = [m for m in log if m.startswith("leaving")]  # said once, not at every look
    assert line == (
        f"leaving 3 pod(s) alone: named ray-golf-* but no node in this Ray cluster (`pipeline pods bootstrap` it, or it is "
        f"another cluster's): {other}; not in this cluster: {colleague}; not named ray-golf-* (in this Ray cluster, but not "
        f"rented for it): {stray}"
    )


def test_a_dead_pod_is_terminated_only_when_seen_dead_over_the_grace_period(runpod):
    dead = runpod.add_pod(name="ray-golf-eval-0", count=1, status="DEAD")
    clock, log = Clock(), []
    watch, client = make_watch(clock, log)
    nodes = {dead: RayNode("n1", False, 1, 0)}  # its Ray node died with it
    assert watch.look(client.list_pods(), nodes) == [] and dead in runpod.pods  # seen once: not terminated
    clock.t = 60.0
    assert watch.look(client.list_pods(), nodes) == []
    clock.t = 120.0
    assert watch.look(client.list_pods(), nodes) == [] and dead in runpod.pods  # 3 looks, but within 5 min
    clock.t = 300.0
    assert watch.look(client.list_pods(), nodes) == [dead] and dead not in runpod.pods
    assert f"{dead}: terminated (RunPod DEAD, no live Ray node, at every look over 3 looks over >= 5 min)" in log


def test_a_look_that_does_not_see_it_dead_starts_the_grace_over(runpod):
    pid = runpod.add_pod(name="ray-golf-eval-0", count=1, status="DEAD")
    clock, log = Clock(), []
    watch, client = make_watch(clock, log)
    nodes = {pid: RayNode("n1", False, 1, 0)}
    for minute in (0, 3):
        clock.t = minute * 60.0
        watch.look(client.list_pods(), nodes)
    clock.t = 4 * 60.0  # Ray shows its node alive again at one look (RunPod's status lagging)
    watch.look(client.list_pods(), {pid: RayNode("n1", True, 1, 0)})
    for minute in (6, 8, 10):  # 3 looks again, 4 min from the first of them
        clock.t = minute * 60.0
        assert watch.look(client.list_pods(), nodes) == []
    clock.t = 11 * 60.0
    assert watch.look(client.list_pods(), nodes) == [pid]


def test_unknown_stopped_and_ssh_answering_pods_are_never_terminated(runpod):
    unknown = runpod.add_pod(name="ray-golf-eval-0", count=1, status="MIGRATING")
    stopped = runpod.add_pod(name="ray-golf-eval-1", count=1, status="EXITED")
    answers = runpod.add_pod(name="ray-golf-eval-2", count=1, status="DEAD")
    clock, log = Clock(), []
    watch, client = make_watch(clock, log, probe=lambda p: None)  # SSH answers on every pod
    nodes = {unknown: RayNode("a", False, 1, 0), stopped: RayNode("b", False, 1, 0), answers: RayNode("c", False, 1, 0)}
    for minute in range(0, 60, 5):
        clock.t = minute * 60.0
        assert watch.look(client.list_pods(), nodes) == []
    assert "podTerminate" not in runpod.ops() and len(runpod.pods) == 3
