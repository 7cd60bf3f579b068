"""Which pod a Ray node is and what its GPUs cost (docs/progress-cost.md "Cost").

A RunPod pod joins the cluster with its identity as node labels (`pipeline pods bootstrap`, the
node provider): pod id, GPU type, GPU count and the pod's $/hour. A node without them (a local
Ray instance, a hand-made cluster) is priced by the spec's `cluster.pricing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.spec import Pricing

# Node label keys: pipeline/pods/bootstrap.py sets them when a pod joins, cost and status read them.
LABEL_POD_ID = "runpod.io/pod-id"
LABEL_GPU_TYPE = "runpod.io/gpu-type"
LABEL_GPU_COUNT = "runpod.io/gpu-count"
LABEL_USD_PER_HOUR = "runpod.io/usd-per-hr"  # the whole pod's $/hour


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    alive: bool
    gpus: float  # the GPUs Ray schedules on it
    gpu_type: str
    usd_per_gpu_hour: float  # what an attempt pays per GPU it holds
    pod_id: str | None = None  # None: not a pod we know (priced by the spec)
    # what the node bills per hour, GPUs held or not: its pod's price (a head started with no Ray
    # GPUs still bills its pod); None in snapshots written before it was recorded: GPUs × price
    usd_per_hour: float | None = None

    @property
    def hourly_usd(self) -> float:
        return self.usd_per_hour if self.usd_per_hour is not None else self.gpus * self.usd_per_gpu_hour

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeIdentity:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def spec_node(pricing: Pricing) -> NodeIdentity:
    """The price of an attempt no recorded node accounts for (a run no driver watched)."""
    return NodeIdentity("spec", True, 0.0, pricing.gpu_type, pricing.usd_per_gpu_hour)


def node_identity(node: dict[str, Any], pricing: Pricing) -> NodeIdentity:
    """From one entry of `ray.nodes()`."""
    labels = node.get("Labels") or {}
    gpus = float((node.get("Resources") or {}).get("GPU", 0.0))
    price, hourly = pricing.usd_per_gpu_hour, gpus * pricing.usd_per_gpu_hour
    pod_price = _float(labels.get(LABEL_USD_PER_HOUR))
    pod_gpus = _float(labels.get(LABEL_GPU_COUNT)) or gpus
    if pod_price is not None:
        hourly = pod_price
        if pod_gpus:
            price = pod_price / pod_gpus
    return NodeIdentity(
        node_id=node["NodeID"], alive=bool(node.get("Alive")), gpus=gpus,
        gpu_type=labels.get(LABEL_GPU_TYPE) or pricing.gpu_type, usd_per_gpu_hour=price, pod_id=labels.get(LABEL_POD_ID),
        usd_per_hour=hourly,
    )


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
