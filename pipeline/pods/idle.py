"""Stop pods nobody uses, so nobody pays for an idle 8×H100.

A RUNNING pod is idle while no unit holds one of its GPUs (its Ray node's GPUs are all free, or it
has no live Ray node). One idle for `idle_stop_min` (spec `cluster.idle_stop_min`, default 10) is
stopped (podStop: GPU billing ends, the volume stays; `pipeline pods` can resume it). The head pod
runs the driver: it is stopped only once every pod has been idle that long, i.e. the campaign has
ended or nothing can run. Any unit starting on a pod resets its clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.health import RayNode
from pipeline.pods.pod import Pod, PodState


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

    def tick(self, pods: list[Pod], ray_nodes: Mapping[str, RayNode]) -> list[str]:
        """One look at the pods; returns the ids stopped now."""
        now = self.clock()
        running = [p for p in pods if p.state is PodState.RUNNING]
        for p in running:
            node = ray_nodes.get(p.id)
            if node is not None and node.busy:
                self.idle_since.pop(p.id, None)
            else:
                self.idle_since.setdefault(p.id, now)
        for gone in set(self.idle_since) - {p.id for p in running}:
            del self.idle_since[gone]
        over = [p for p in running if p.id in self.idle_since and now - self.idle_since[p.id] >= self.limit_s]
        everyone_idle = len(over) == len(running)
        stopped = []
        for p in over:
            if p.id == self.head_pod_id and not everyone_idle:
                continue
            idle_min = (now - self.idle_since[p.id]) / 60
            try:
                self.client.stop_pod(p.id)
            except RunPodError as e:  # try again next tick
                self.log(f"{p.id}: idle {idle_min:.0f} min, stop failed: {e}")
                continue
            self.log(f"{p.id} ({p.gpu_count}× {p.gpu_type}, ${p.cost_per_hr:.2f}/h): no unit used it for {idle_min:.0f} min: stopped")
            del self.idle_since[p.id]
            stopped.append(p.id)
        return stopped
