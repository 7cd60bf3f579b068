"""The pod record the client returns, and what each RunPod status means to us.

RunPod's GraphQL `desiredStatus` has had CREATED, RUNNING, RESTARTING, PAUSED, EXITED, DEAD,
TERMINATED; the REST v2 API says PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED. A value
we have never seen maps to UNKNOWN (kept verbatim in `status`), never a KeyError.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any


# The env variable through which the node provider gives a pod its Ray tags when it creates it: the
# one place they survive the autoscaler restarting (docs/pods.md: Pods, cluster.yaml).
RAY_TAGS_ENV = "PIPELINE_RAY_TAGS"


PROJECT_PREFIX = "ray-"  # every pod the project rents is named ray-<cluster>-...


def cluster_prefix(cluster_name: str) -> str:
    """The name every pod the project rents for a cluster starts with (`pipeline pods up` and the
    node provider alike): with the cluster's Ray nodes, how a pod action tells this cluster's pods
    from the rest of a shared account (docs/pods.md: Pods)."""
    return f"{PROJECT_PREFIX}{cluster_name}-"


class PodState(str, enum.Enum):
    STARTING = "starting"  # asked for, the container is not up yet
    RUNNING = "running"
    STOPPED = "stopped"  # container gone, volume kept (podStop); podResume brings it back
    DEAD = "dead"  # the container failed; it will not come back by itself
    TERMINATED = "terminated"  # gone for good
    UNKNOWN = "unknown"  # a status this code does not know

    @property
    def usable(self) -> bool:
        """Can run work now or soon without anyone acting on it."""
        return self in (PodState.STARTING, PodState.RUNNING)


_STATES = {
    "CREATED": PodState.STARTING,
    "PROVISIONING": PodState.STARTING,
    "STARTING": PodState.STARTING,
    "RESTARTING": PodState.STARTING,
    "RUNNING": PodState.RUNNING,
    "EXITED": PodState.STOPPED,
    "PAUSED": PodState.STOPPED,
    "DEAD": PodState.DEAD,
    "ERROR": PodState.DEAD,
    "TERMINATED": PodState.TERMINATED,
}


def pod_state(status: str | None) -> PodState:
    return _STATES.get((status or "").upper(), PodState.UNKNOWN)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: str  # RunPod's value, verbatim
    gpu_type: str
    gpu_count: int
    cost_per_hr: float  # USD; RunPod sends a string
    uptime_s: float  # of the running container (0 when it is not up)
    ssh: Endpoint | None  # public ip : the public port mapped to private port 22
    private_ip: str | None = None
    image: str = ""
    ray_tags: dict[str, str] = field(default_factory=dict)  # what the node provider set at creation

    @property
    def state(self) -> PodState:
        return pod_state(self.status)

    @property
    def cost_so_far(self) -> float:
        """USD for the container's current run: uptime × price (billing is per second)."""
        return self.uptime_s / 3600.0 * self.cost_per_hr


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def parse_pod(d: dict[str, Any]) -> Pod:
    """A pod from GraphQL's Pod shape; missing or null parts (no runtime while starting) are empty."""
    runtime = d.get("runtime") or {}
    ports = runtime.get("ports") or []
    ssh = private_ip = None
    for p in ports:
        if p.get("privatePort") == 22 and p.get("isIpPublic") and p.get("ip") and p.get("publicPort"):
            ssh = Endpoint(str(p["ip"]), int(p["publicPort"]))
        elif p.get("ip") and not p.get("isIpPublic"):
            private_ip = str(p["ip"])
    machine = d.get("machine") or {}
    tags: dict[str, str] = {}
    # RunPod returns env as ["K=V", ...]. Only our tag variable is read: the rest may hold secrets.
    for e in d.get("env") or []:
        if isinstance(e, str) and e.startswith(RAY_TAGS_ENV + "="):
            try:
                loaded = json.loads(e.split("=", 1)[1])
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                tags = {str(k): str(v) for k, v in loaded.items()}
    return Pod(
        id=str(d.get("id") or ""),
        name=str(d.get("name") or ""),
        status=str(d.get("desiredStatus") or ""),
        gpu_type=str(machine.get("gpuDisplayName") or ""),
        gpu_count=int(d.get("gpuCount") or 0),
        cost_per_hr=_float(d.get("costPerHr")),
        uptime_s=_float(runtime.get("uptimeInSeconds")),
        ssh=ssh,
        private_ip=private_ip,
        image=str(d.get("imageName") or ""),
        ray_tags=tags,
    )
