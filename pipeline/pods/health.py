"""Is a pod alive? RunPod's status, then Ray's view of the node, then SSH.

A pod is dead when RunPod says it is stopped, dead, terminated or something we do not know, or when
it is RUNNING but Ray has no live node for it and SSH does not answer either. When a pod's node
dies, Ray fails the tasks on it; the driver classifies that as node death (transient) and runs the
units again elsewhere from the store (docs/faults.md: Errors and retries). `pipeline pods list` shows this
verdict per pod; `pod_health` is the function a status view calls.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pipeline.records.nodes import LABEL_POD_ID
from pipeline.pods.pod import Pod, PodState


class Verdict(str, enum.Enum):
    ALIVE = "alive"
    STARTING = "starting"
    NOT_JOINED = "not in ray"  # the container answers SSH, no Ray node for it (bootstrap it)
    DEAD = "dead"


@dataclass(frozen=True)
class RayNode:
    node_id: str
    alive: bool
    gpus_total: float
    gpus_free: float

    @property
    def busy(self) -> bool:
        return self.alive and self.gpus_free < self.gpus_total


@dataclass(frozen=True)
class PodHealth:
    pod_id: str
    verdict: Verdict
    reason: str


def ray_pod_nodes() -> dict[str, RayNode]:
    """pod id -> its Ray node, from the Ray this process is connected to (ray.init first). A live
    node wins over dead ones of the same pod (a re-bootstrapped pod)."""
    import ray
    from ray._private.state import available_resources_per_node  # the only per-node free view without the dashboard

    free = available_resources_per_node()
    out: dict[str, RayNode] = {}
    for n in ray.nodes():
        pod_id = (n.get("Labels") or {}).get(LABEL_POD_ID)
        if not pod_id:
            continue
        alive = bool(n.get("Alive"))
        total = float((n.get("Resources") or {}).get("GPU", 0.0))
        node = RayNode(n["NodeID"], alive, total, float(free.get(n["NodeID"], {}).get("GPU", 0.0)) if alive else 0.0)
        if pod_id not in out or (alive and not out[pod_id].alive):
            out[pod_id] = node
    return out


def pod_health(pod: Pod, ray_nodes: Mapping[str, RayNode] | None, ssh_probe: Callable[[Pod], str | None] | None = None) -> PodHealth:
    """`ray_nodes` None: no Ray view (the verdict rests on RunPod alone). `ssh_probe` returns an
    error line, or None when SSH answers; asked only when Ray has no live node for the pod."""
    state = pod.state
    if state is PodState.STARTING:
        return PodHealth(pod.id, Verdict.STARTING, f"RunPod {pod.status}")
    if state is not PodState.RUNNING:
        return PodHealth(pod.id, Verdict.DEAD, f"RunPod status {pod.status or '(none)'}" + (" (unknown)" if state is PodState.UNKNOWN else ""))
    if ray_nodes is None:
        return PodHealth(pod.id, Verdict.ALIVE, "RunPod RUNNING (no Ray view)")
    node = ray_nodes.get(pod.id)
    if node is not None and node.alive:
        return PodHealth(pod.id, Verdict.ALIVE, f"Ray node {node.node_id[:8]}, {node.gpus_total - node.gpus_free:g}/{node.gpus_total:g} GPUs busy")
    in_ray = "its Ray node died" if node is not None else "no Ray node"
    if ssh_probe is None:
        return PodHealth(pod.id, Verdict.NOT_JOINED, f"RunPod RUNNING, {in_ray} (SSH not checked)")
    err = ssh_probe(pod)
    if err:
        return PodHealth(pod.id, Verdict.DEAD, f"RunPod RUNNING but {in_ray} and SSH fails: {err}")
    return PodHealth(pod.id, Verdict.NOT_JOINED, f"SSH answers, {in_ray}: `pipeline pods bootstrap {pod.id}`")


@dataclass(frozen=True)
class DeadGrace:
    """How long a death must be seen before a pod is terminated (its volume goes with it): at
    `looks` looks in a row that span at least `min_s`. One look can be wrong (an API hiccup, a node
    restarting its Ray, an SSH timeout); a pod that is still dead five minutes later is not coming back."""

    looks: int = 3
    min_s: float = 300.0

    def __str__(self) -> str:
        return f"{self.looks} looks over >= {self.min_s / 60:g} min"


class DeathWatch:
    """Counts, per pod, the looks in a row at which it was seen dead; any look that does not see it
    dead starts it over."""

    def __init__(self, grace: DeadGrace = DeadGrace(), clock: Callable[[], float] = time.monotonic) -> None:
        self.grace, self.clock = grace, clock
        self.seen: dict[str, tuple[float, int]] = {}  # pod id -> (first seen dead, looks in a row)

    def look(self, dead: Iterable[str]) -> list[str]:
        """One look: `dead` is every pod seen dead now. Returns those dead for the whole grace period."""
        now, dead = self.clock(), set(dead)
        self.seen = {i: (self.seen[i][0], self.seen[i][1] + 1) if i in self.seen else (now, 1) for i in dead}
        return sorted(i for i, (first, n) in self.seen.items() if n >= self.grace.looks and now - first >= self.grace.min_s)

    def forget(self, pod_id: str) -> None:
        self.seen.pop(pod_id, None)
