"""The driver's watch over the RunPod pods of its cluster (docs/pods.md "Pods (RunPod)": idle pods).

While a campaign runs, the driver looks at its pods once a minute: a pod none of whose GPUs a unit
has held for `cluster.idle_stop_min` (its training is over and no eval can use it, or it has no
live Ray node) is stopped, so nobody pays for an idle 8×H100. The pod that runs the driver is never
stopped from inside it; when the run ends the driver names the pods still billing and the command
that stops them (`pipeline pods watch`, or the autoscaler under `ray up`, stops them later).

Only pods that are nodes of this Ray cluster and carry the project's name prefix (`ray-`: `pipeline
pods up` and the node provider name them `ray-<cluster>-...`; the driver does not know the cluster's
name, its Ray nodes say which pods are its own) are ever stopped: a colleague's pod, or one
bootstrapped into the cluster by hand under another name, is left alone and said so once.
A pod is idle only while no unit of the campaign can use it: the driver hands each look its
`Demand` (pipeline/pods/idle.py), so a pod whose GPUs a waiting multi-GPU unit gathers is kept.
The looks run on a thread of their own (pipeline/pods/checks.py), so the driver loop never waits
on the API; each call is bounded (LOOK_TIMEOUT_S, LOOK_ATTEMPTS: the next look is a minute away).

Only active where there is a RunPod key and the Ray cluster has nodes labelled as pods; a RunPod
API error is a log line, never a reason to stop the campaign.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.health import RayNode, ray_pod_nodes
from pipeline.pods.idle import Demand, IdleStopper
from pipeline.pods.pod import PROJECT_PREFIX, PodState

LOOK_EVERY_S = 60.0
LOOK_TIMEOUT_S, LOOK_ATTEMPTS = 20.0, 2  # one look gives up in about a minute, not 6 × 30 s + backoff


class CampaignPods:
    def __init__(
        self, client: RunPodClient, idle_stop_min: float, own_pod: str | None, log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic, every_s: float = LOOK_EVERY_S,
        nodes: Callable[[], Mapping[str, RayNode]] = ray_pod_nodes,
    ):
        """`every_s`: between looks (PodChecks'); `nodes`: pod id -> its Ray node, the view of the
        Ray this process is connected to."""
        self.client, self.own_pod, self.log, self.every_s = client, own_pod, log, every_s
        self.nodes = nodes
        self.left_alone: set[str] = set()  # pods already said to be left alone
        self.stopper = IdleStopper(client, idle_stop_min, head_pod_id=None, clock=clock, log=log)

    @classmethod
    def for_cluster(cls, idle_stop_min: float, log: Callable[[str], None]) -> CampaignPods | None:
        """None unless this process has a RunPod key and the cluster has pod nodes."""
        import ray

        from pipeline.records.nodes import LABEL_POD_ID

        if not ray_pod_nodes():
            return None
        try:
            client = RunPodClient.from_env(timeout_s=LOOK_TIMEOUT_S, max_attempts=LOOK_ATTEMPTS)
        except RunPodError:
            return None
        own = (ray.get_runtime_context().get_node_labels() or {}).get(LABEL_POD_ID)
        return cls(client, idle_stop_min, own, log)

    def look(self, demand: Demand | None = None) -> list[str]:
        """One look now: stop the pods no unit has used or can use for idle_stop_min (`demand`:
        what the driver's waiting units need); the ids stopped. Raises RunPodError."""
        nodes = self.nodes()
        pods = [p for p in self.client.list_pods() if p.id in nodes and p.id != self.own_pod]
        # a node of this cluster the project did not rent (someone bootstrapped their own pod in) is never stopped
        ours = [p for p in pods if p.name.startswith(PROJECT_PREFIX)]
        if alone := sorted({p.id for p in pods} - {p.id for p in ours} - self.left_alone):
            self.log(f"pods: leaving {', '.join(alone)} alone: in this Ray cluster but not named {PROJECT_PREFIX}* (not rented by pipeline)")
            self.left_alone.update(alone)
        return self.stopper.tick(ours, nodes, demand)

    def still_billing(self) -> list[str]:
        """One line per pod of this cluster still RUNNING, for the end of a run."""
        nodes = self.nodes()
        try:
            pods = [p for p in self.client.list_pods() if p.id in nodes and p.state is PodState.RUNNING]
        except RunPodError as e:
            return [f"pods: {e}"]
        return [
            f"pod {p.id} ({p.gpu_count}× {p.gpu_type}, ${p.cost_per_hr:.2f}/h) is still running: `pipeline pods stop {p.id}`"
            + (" (this driver's pod)" if p.id == self.own_pod else "")
            for p in pods
        ]
