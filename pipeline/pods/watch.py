"""`pipeline pods watch`, one look at a time, safe on a RunPod account shared with colleagues
(docs/pods.md: Pods, "What `watch` touches").

A pod is this cluster's when its name carries the cluster's prefix (`ray-<cluster>-`, which
`pipeline pods up` and the node provider give every pod they rent: pod.cluster_prefix) AND a node
of this Ray cluster carries its pod id (alive or dead, or seen by this watch at an earlier look:
Ray may forget a dead node). Only those are stopped or terminated; every other pod of the account
is left alone, and one line says which and why whenever that set changes.

A pod is terminated (`--terminate-dead`; its volume goes with it) only when, at every look over the
grace period (health.DeadGrace), RunPod calls it DEAD or ERROR, its Ray node is not alive and, with
`--ssh`, SSH fails. A stopped pod is the user's (its volume stays) and a status this code does not
know is never a reason to delete anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.health import DeathWatch, PodHealth, RayNode, pod_health
from pipeline.pods.idle import IdleStopper
from pipeline.pods.pod import Pod, PodState, cluster_prefix


class ClusterScope:
    """Which pods of the account are this cluster's to act on."""

    def __init__(self, cluster_name: str) -> None:
        self.prefix = cluster_prefix(cluster_name)
        self.in_ray: set[str] = set()  # pod ids a node of this Ray cluster carried at some look

    def split(self, pods: list[Pod], nodes: Mapping[str, RayNode] | None) -> tuple[list[Pod], dict[str, list[str]]]:
        """(the pods to act on, {why left alone: pod ids}). Without a Ray view nothing is acted on."""
        self.in_ray |= set(nodes or ())
        ours: list[Pod] = []
        alone: dict[str, list[str]] = {}
        for p in pods:
            named, in_ray = p.name.startswith(self.prefix), p.id in self.in_ray
            if named and in_ray and nodes is not None:
                ours.append(p)
                continue
            if not named:
                why = f"not named {self.prefix}* (in this Ray cluster, but not rented for it)" if in_ray else "not in this cluster"
            elif nodes is None:
                why = "no Ray view (--ray): health only"
            else:
                why = f"named {self.prefix}* but no node in this Ray cluster (`pipeline pods bootstrap` it, or it is another cluster's)"
            alone.setdefault(why, []).append(p.id)
        return ours, alone


def leaving_alone(alone: Mapping[str, list[str]]) -> str:
    n = sum(len(v) for v in alone.values())
    return f"leaving {n} pod(s) alone: " + "; ".join(f"{why}: {', '.join(sorted(ids))}" for why, ids in sorted(alone.items()))


class PodWatch:
    """One look = report health changes of the cluster's pods, stop the idle ones, and terminate
    the ones dead for the whole grace period (where `deaths` is given)."""

    def __init__(
        self, client: RunPodClient, scope: ClusterScope, stopper: IdleStopper | None, deaths: DeathWatch | None,
        ssh_probe: Callable[[Pod], str | None] | None, log: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.client, self.scope, self.stopper, self.deaths, self.probe, self.log = client, scope, stopper, deaths, ssh_probe, log
        self.last: dict[str, str] = {}
        self.said_alone = ""

    def look(self, pods: list[Pod], nodes: Mapping[str, RayNode] | None) -> list[str]:
        """The ids terminated at this look."""
        ours, alone = self.scope.split(pods, nodes)
        line = leaving_alone(alone) if alone else ""
        if line != self.said_alone and line:
            self.log(line)
        self.said_alone = line
        acting = {p.id for p in ours}
        named = [p for p in pods if p.name.startswith(self.scope.prefix)]
        dead: list[str] = []
        for p in named:
            h = pod_health(p, nodes, self.probe)
            if self.last.get(p.id) != h.verdict.value:
                self.log(f"{p.id}: {h.verdict.value} ({h.reason})")
                self.last[p.id] = h.verdict.value
            if p.id in acting and self._dead(p, h, nodes):
                dead.append(p.id)
        terminated = []
        for pid in self.deaths.look(dead) if self.deaths is not None else []:
            try:
                self.client.terminate_pod(pid)
            except RunPodError as e:  # still dead at the next look: tried again
                self.log(f"{pid}: dead over {self.deaths.grace}, terminate failed: {e}")
                continue
            self.deaths.forget(pid)
            self.log(f"{pid}: terminated (RunPod DEAD, no live Ray node{', SSH fails' if self.probe else ''}, at every look over {self.deaths.grace})")
            terminated.append(pid)
        if self.stopper is not None and nodes is not None:
            self.stopper.tick([p for p in ours if p.id not in terminated], nodes)
        return terminated

    def _dead(self, pod: Pod, health: PodHealth, nodes: Mapping[str, RayNode] | None) -> bool:
        """RunPod's word (DEAD/ERROR: never a stopped pod or an unknown status), Ray's and SSH's agree."""
        if pod.state is not PodState.DEAD or nodes is None:
            return False
        node = nodes.get(pod.id)
        if node is not None and node.alive:
            return False
        return self.probe is None or bool(self.probe(pod))
