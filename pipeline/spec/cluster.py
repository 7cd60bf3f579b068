"""Where a campaign runs and what it costs: the Ray cluster's settings, GPU pricing, money bounds
and a RunPod pod's config."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from pipeline.spec.base import Strict, check_env


class LocalCluster(Strict):
    """Resources of the Ray instance `pipeline run` starts when no cluster address is given.

    GPUs here are logical slots: on a CPU box they let the same num_gpus=1 scheduling run unchanged.
    """

    num_cpus: int = Field(4, ge=1)
    num_gpus: int = Field(4, ge=0)


# Sanity bounds on money (finite; `.inf` or 1e300 is a typo, not a budget): far above any campaign
# or GPU RunPod rents (an 8×B200 pod is ~$50/h), far below what would hide a mistake.
MAX_BUDGET_USD = 1_000_000.0
MAX_USD_PER_GPU_HOUR = 100.0


def _at_most(limit: float, unit: str):
    def check(v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v <= limit):
            raise ValueError(f"{v:g} is not a sane amount: give a finite number, at most {limit:,.0f} {unit}")
        return v

    return AfterValidator(check)


UsdPerGpuHour = Annotated[float, _at_most(MAX_USD_PER_GPU_HOUR, "$ per GPU-hour")]
BudgetUsd = Annotated[float | None, _at_most(MAX_BUDGET_USD, "$")]


class Pricing(Strict):
    """What a GPU costs where the node does not say (a RunPod pod's labels say it: docs/progress-cost.md "Cost").
    Locally it prices the logical GPU slots as the GPUs they stand for, so the demo's figures read
    like a pod's."""

    gpu_type: str = Field("unknown", min_length=1, description="shown in cost and status tables")
    usd_per_gpu_hour: UsdPerGpuHour = Field(0.0, ge=0, description=f"$ per GPU-hour; 0 = cost unknown; at most {MAX_USD_PER_GPU_HOUR:g}")


class ClusterSpec(Strict):
    address: str | None = Field(None, description="Ray address; None = start a local instance (ray job submit sets RAY_ADDRESS)")
    max_interruptions: int = Field(
        5, ge=0, description="transient failures (node death, preemption, S3 5xx, ...) retried per eval unit before it is FAILED"
    )
    retry_backoff_s: float = Field(5.0, ge=0, description="first retry delay after a transient failure; doubles per retry (at most 5 min)")
    wait_for_capacity_s: float = Field(
        900.0, gt=0, description="how long a unit waits for GPUs the cluster does not have (a node left) before the run "
        "ends with it PENDING (a re-run picks it up)"
    )
    accelerator: Literal["cuda", "cpu"] = Field("cuda", description="device the workers compute on")
    cpu_threads: int = Field(1, ge=1, description="torch threads per worker on CPU (fixed so results repeat bit for bit)")
    local: LocalCluster = LocalCluster()
    pricing: Pricing = Field(default_factory=lambda: Pricing(), description="price of nodes that do not carry their own (pod labels)")
    groups_span_nodes: bool = Field(
        False, description="a training or TTT group that no single node holds may spread over nodes (NCCL between "
        "pods over their network: slow on RunPod); by default each group runs on one node (STRICT_PACK) and waits for one"
    )
    idle_stop_min: float = Field(
        10.0, gt=0, description="a RunPod pod of the cluster that no unit used or could use for this long is stopped "
        "(by the driver, or `pipeline pods watch`; docs/pods.md: Pods): not one whose GPUs a waiting unit gathers; the head "
        "pod only once every pod is idle"
    )


class PodConfig(Strict):
    """One RunPod on-demand pod: a node type's `node_config` in cluster.yaml, or `pipeline pods up`'s
    flags. Names follow podFindAndDeployOnDemand's input (docs/pods.md: Pods)."""

    gpu_type_id: str = Field(min_length=1, description="RunPod GPU type id, e.g. 'NVIDIA H100 80GB HBM3'")
    gpu_count: int = Field(1, ge=1, le=16)
    image: str = Field("runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04", min_length=1)
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "SECURE"
    container_disk_gb: int = Field(50, ge=1)
    volume_gb: int = Field(0, ge=0, description="pod volume (kept while the pod is stopped); 0 = none")
    volume_mount_path: str = "/workspace"
    network_volume_id: str | None = Field(None, description="a RunPod network volume to mount at volume_mount_path")
    min_vcpu: int = Field(8, ge=1)
    min_memory_gb: int = Field(32, ge=1)
    ports: list[str] = Field(default_factory=lambda: ["22/tcp"], description="'22/tcp' is how SSH reaches the pod")
    env: dict[str, str] = Field(default_factory=dict)
    docker_args: str = ""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v, "RunPod shows a pod's env to everyone on the account; use a RunPod secret ('{{ RUNPOD_SECRET_name }}')", refs_ok=True)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[0-9]{1,5}/(tcp|http)", p):
                raise ValueError(f"{p!r} is not a port: use '22/tcp' or '8888/http'")
        return v
