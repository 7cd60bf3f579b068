"""Stop pods nobody uses, so nobody pays for an idle 8×H100.

A RUNNING pod is idle while no unit holds one of its GPUs (its Ray node's GPUs are all free, or it
has no live Ray node) and no unit waiting to start can use it. One idle for `idle_stop_min` (spec
`cluster.idle_stop_min`, default 10) is stopped (podStop: GPU billing ends, the volume stays;
`pipeline pods` can resume it). The head pod runs the driver: it is stopped only once every pod
has been idle that long, i.e. the campaign has ended or nothing can run. Any unit starting on a pod
resets its clock.

Free GPUs are not the same as unused ones: the scheduler keeps GPUs free on purpose while it
gathers them for a multi-GPU unit, and a unit bigger than the cluster waits `wait_for_capacity_s`
(15 min by default, longer than `idle_stop_min`) for GPUs to join. So the driver hands the stopper
its `Demand`, what its PENDING and waiting units need, and a pod is not idle while a unit of the
demand could run on it alone, nor stopped while stopping it would leave the cluster fewer GPUs
than the largest unit of the demand needs: a stop never makes a waiting unit unrunnable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.health import RayNode
from pipeline.pods.pod import Pod, PodState


@dataclass(frozen=True)
class Need:
    """Units of one size waiting to start: PENDING ones, or a running one that lost its GPUs."""

    gpus: float
    units: int = 1
    avoid_nodes: frozenset[str] = frozenset()  # Ray nodes all of them would rather stay off (a retry's soft affinity)


@dataclass(frozen=True)
class Demand:
    """What the driver's units still need, as the stopper must leave it runnable. `cluster_gpus`:
    the GPUs of the cluster's alive nodes now (the driver's capacity, head included)."""

    cluster_gpus: float = 0.0
    needs: tuple[Need, ...] = ()

    @classmethod
    def of(cls, cluster_gpus: float, pending: Mapping[float, int], avoided: Iterable[tuple[float, Iterable[str]]] = (),
           waiting: Iterable[float] = ()) -> Demand:  # fmt: skip
        """`pending`: GPU size → PENDING units of that size; `avoided`: (size, nodes) of each
        PENDING unit a retry steers off nodes; `waiting`: the sizes of running units that lost
        their GPUs. A size's units avoid a node only if every one of them does."""
        avoid: dict[float, tuple[int, frozenset[str]]] = {}
        for size, nodes in avoided:
            n, common = avoid.get(size, (0, None))
            avoid[size] = (n + 1, frozenset(nodes) if common is None else common & frozenset(nodes))
        needs = [
            Need(size, n, avoid[size][1] if avoid.get(size, (0,))[0] == n else frozenset())
            for size, n in sorted(pending.items()) if n > 0
        ] + [Need(size) for size in waiting]
        return cls(cluster_gpus, tuple(needs))

    @property
    def largest(self) -> float:
        return max((n.gpus for n in self.needs), default=0.0)

    def can_use(self, node: RayNode, nodes: Iterable[RayNode]) -> Need | None:
        """A need whose units could run on `node` alone; a node they avoid only if no other alive
        node could hold them (the affinity is soft: they would run there)."""
        if not node.alive:
            return None
        for need in self.needs:
            if 0 < need.gpus <= node.gpus_total and (
                node.node_id not in need.avoid_nodes
                or not any(n.alive and n.node_id not in need.avoid_nodes and n.gpus_total >= need.gpus for n in nodes)
            ):
                return need
        return None


class IdleStopper:
    def __init__(
        self,
        client: RunPodClient,
        idle_stop_min: float,
        head_pod_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.limit_s = idle_stop_min * 60.0
        self.head_pod_id = head_pod_id
        self.clock = clock
        self.log = log
        self.idle_since: dict[str, float] = {}

    def tick(self, pods: list[Pod], ray_nodes: Mapping[str, RayNode], demand: Demand | None = None) -> list[str]:
        """One look at the pods; returns the ids stopped now. `demand` None: no driver to ask
        (`pipeline pods watch`), only held GPUs count."""
        now = self.clock()
        running = [p for p in pods if p.state is PodState.RUNNING]
        for p in running:
            node = ray_nodes.get(p.id)
            if node is not None and (node.busy or (demand is not None and demand.can_use(node, ray_nodes.values()))):
                self.idle_since.pop(p.id, None)
            else:
                self.idle_since.setdefault(p.id, now)
        for gone in set(self.idle_since) - {p.id for p in running}:
            del self.idle_since[gone]
        over = [p for p in running if p.id in self.idle_since and now - self.idle_since[p.id] >= self.limit_s]
        everyone_idle = len(over) == len(running)
        # the cluster's GPUs once the stops so far are done: not those of a pod already stopped whose
        # Ray node has not died yet (the driver's count of GPUs may still hold them)
        left = (demand.cluster_gpus if demand is not None else 0.0) - sum(
            n.gpus_total for p in pods if not p.state.usable and (n := ray_nodes.get(p.id)) is not None and n.alive
        )
        stopped = []
        for p in over:
            if p.id == self.head_pod_id and not everyone_idle:
                continue
            idle_min = (now - self.idle_since[p.id]) / 60
            node = ray_nodes.get(p.id)
            gpus = node.gpus_total if node is not None and node.alive else 0.0
            if demand is not None and gpus > 0 and left - gpus < demand.largest:
                # its GPUs are what a waiting unit gathers (a group may span pods): not idle
                self.log(f"{p.id}: no unit used it for {idle_min:.0f} min, kept: without it the cluster has "
                         f"{left - gpus:g} GPUs, fewer than the {demand.largest:g} a waiting unit needs")  # fmt: skip
                self.idle_since[p.id] = now
                continue
            try:
                self.client.stop_pod(p.id)
            except RunPodError as e:  # try again next tick
                self.log(f"{p.id}: idle {idle_min:.0f} min, stop failed: {e}")
                continue
            self.log(f"{p.id} ({p.gpu_count}× {p.gpu_type}, ${p.cost_per_hr:.2f}/h): no unit used it for {idle_min:.0f} min: stopped")
            del self.idle_since[p.id]
            left -= gpus
            stopped.append(p.id)
        return stopped
