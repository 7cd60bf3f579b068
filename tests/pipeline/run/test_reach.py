"""The driver's own view of vanished nodes (pipeline/run/reach.py): real TCP listeners on 127.0.0.1
for the probe; a real multi-node Ray cluster for what the executor does with a node it cannot reach
(nothing new goes there, neither an eval task nor a training group's worker). The death of a pod
as a whole, namespace and all, is tests/pipeline/pods/test_farm.py."""

from __future__ import annotations

import socket
import threading
import time

from pipeline.run.reach import NodeReach, ReachPolicy, Target, tcp_connect


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s


def test_a_node_that_stops_answering_is_unreachable_after_its_misses_and_back_when_it_answers():
    up = listener()
    port = up.getsockname()[1]
    reach = NodeReach(ReachPolicy(misses=3, timeout_s=0.5), thread=False)
    reach.watch([Target("n1", "127.0.0.1", port)])
    reach.probe_once()
    assert reach.unreachable() == frozenset()
    up.close()  # the node's port is gone: connects are refused
    reach.probe_once(), reach.probe_once()
    assert reach.unreachable() == frozenset()  # two misses are not yet a death
    reach.probe_once()
    assert reach.unreachable() == {"n1"}
    again = listener(port)
    reach.probe_once()
    assert reach.unreachable() == frozenset()  # it answered: a blip, not a death
    again.close()


def test_a_node_never_reached_is_not_called_dead_and_a_dead_host_does_not_delay_the_others():
    up = listener()
    calls: list[str] = []
    far_waiting = threading.Event()
    near_during_far: list[bool] = []

    def connect(host, port, timeout):
        calls.append(host)
        if host == "10.255.255.1":  # a host that never answers: the connect times out
            far_waiting.set()
            time.sleep(timeout)
            far_waiting.clear()
            return False
        far_waiting.wait(timeout)
        near_during_far.append(far_waiting.is_set())
        return tcp_connect(host, port, timeout)

    reach = NodeReach(ReachPolicy(misses=1, timeout_s=1.0), connect=connect, thread=False)
    reach.watch([Target("far", "10.255.255.1", 1), Target("near", "127.0.0.1", up.getsockname()[1])])
    for _ in range(3):
        reach.probe_once()
    assert near_during_far == [True] * 3  # each round, the near node was asked while the far one hung
    assert reach.unreachable() == frozenset()  # `far` never answered: a network layout, not a death
    assert calls.count("127.0.0.1") == 3
    up.close()
    reach.close()


def test_the_thread_probes_what_watch_names():
    up = listener()
    reach = NodeReach(ReachPolicy(period_s=0.05, timeout_s=0.5, misses=2))
    reach.watch([Target("n1", "127.0.0.1", up.getsockname()[1])])
    deadline = time.monotonic() + 10
    while reach.silent_s("n1") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    up.close()
    while reach.unreachable() != {"n1"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reach.unreachable() == {"n1"}
    reach.watch([])  # Ray dropped the node: no longer probed, no longer reported
    assert reach.unreachable() == frozenset()
    reach.close()


def where_am_i(*args, **kwargs) -> dict:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "avoid": kwargs.get("avoid", ())}


def record_node(config: dict) -> None:
    import ray

    from pipeline.store import open_store

    open_store(config["store"]).put_json("node.json", {"node": ray.get_runtime_context().get_node_id()})


def test_nothing_new_goes_to_a_node_the_driver_cannot_reach(ray_cluster, tmp_path):
    """A node Ray still lists alive but whose raylet port the driver's host no longer reaches (a
    vanished pod, seconds before Ray's health check says so): the executor reports it not alive,
    leaves it out of the capacity, and keeps eval tasks and a training group's workers off it."""
    import ray

    from pipeline.run.executor import Launch, RayExecutor, UnitFns
    from pipeline.store import Layout, open_store
    from pipeline.run.tasks import fit_group
    from pipeline.records.units import Unit

    gpu_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
    lost, kept = gpu_nodes[0], set(gpu_nodes[1:])
    port = {n["NodeID"]: int(n["NodeManagerPort"]) for n in ray.nodes()}

    def connect(host, p, timeout):  # the lost node's raylet stops answering the driver's host
        return p != port[lost] and tcp_connect(host, p, timeout)

    reach = NodeReach(ReachPolicy(period_s=0.05, timeout_s=0.5, misses=2), connect=connect)
    reach._answered[lost] = time.monotonic()  # it answered before it vanished
    ex = RayExecutor(UnitFns(where_am_i, where_am_i, where_am_i, {}, "", {}, "run"), reach=reach)
    deadline = time.monotonic() + 30
    while any(n["NodeID"] == lost and n["Alive"] for n in ex.nodes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    view = {n["NodeID"]: n for n in ex.nodes()}
    assert view[lost]["Alive"] is False and view[lost]["Unreachable"] > 0 and all(view[k]["Alive"] for k in kept)
    assert {n["NodeID"]: n["Alive"] for n in ray.nodes()}[lost]  # Ray itself still lists it alive
    assert ex.capacity().nodes == (2.0, 2.0)

    # eval shards: 6 at once would fill every node's GPUs; every one runs on a node still reached
    handles = [ex.submit(Launch(Unit.eval(1, "sw", i), f"a{i}", 1.0)) for i in range(6)]
    assert {ex.result(h)["node"] for h in handles} <= kept
    # a training's launcher is told which nodes to avoid, and a group given them keeps its workers off them
    assert ex.result(ex.submit(Launch(Unit.train(1), "t1", 1.0)))["avoid"] == (lost,)
    store = open_store(str(tmp_path / "store"))
    for i in range(2):
        config = {"store": store.uri, "attempt": f"x{i}"}
        fit_group("avoid", record_node, config, 1, 1.0, "cpu", store, Layout("t").train_error(1, f"x{i}"), avoid=(lost,))
        assert store.get_json("node.json")["node"] in kept
    ex.close()
