"""Ray cluster launcher node provider on RunPod (`provider: {type: external, module:
pipeline.pods.provider.RunPodNodeProvider}` in cluster.yaml).

A cluster's pods are the account's pods named `ray-<cluster>-...` (pod.cluster_prefix); no other
pod is listed or touched. The tags Ray sets when it creates a node travel in the pod's env
(PIPELINE_RAY_TAGS), so they survive the autoscaler restarting; the tags it changes later (node
status, config hashes) are kept in a versioned file beside it. Only pods RunPod reports STARTING or
RUNNING are non-terminated; a pod that stopped, died or says something unknown is not part of the
cluster for Ray, so the autoscaler launches a replacement. A stopped pod is never terminated here:
it keeps its volume until the user resumes or ends it (`pipeline pods resume`/`terminate`). A pod
RunPod calls DEAD at every look over a grace period (health.DeadGrace: its container is gone, and
its Ray node with it) is terminated so its volume stops billing; an unknown status never is. The
autoscaler's own terminate_node ends what it chose to end. SSH goes to the public port RunPod maps
to port 22.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler.node_provider import NodeProvider

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.health import DeadGrace, DeathWatch
from pipeline.pods.pod import Pod, PodState, cluster_prefix
from pipeline.spec import SpecError, parse_pod_config

TAGS_VERSION = 1
_CACHE_S = 5.0  # the autoscaler asks many times per update; one list call serves them


class RunPodNodeProvider(NodeProvider):
    def __init__(
        self, provider_config: dict[str, Any], cluster_name: str, client: RunPodClient | None = None,
        dead_grace: DeadGrace = DeadGrace(), clock=time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__(provider_config, cluster_name)
        self.client = client or RunPodClient.from_env()
        self.prefix = cluster_prefix(cluster_name)
        self.deaths = DeathWatch(dead_grace, clock)
        cache = Path(os.environ.get("PIPELINE_CACHE_DIR") or "~/.cache/pipeline").expanduser()
        self.tags_path = Path(provider_config.get("tags_file") or cache / f"runpod-{cluster_name}-tags.json").expanduser()
        self._lock = threading.RLock()
        self._pods: dict[str, Pod] = {}
        self._listed_at = -1e9
        self._tags = self._load_tags()

    # -- the cluster's pods --------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> dict[str, Pod]:
        with self._lock:
            if force or time.monotonic() - self._listed_at > _CACHE_S:
                pods = {p.id: p for p in self.client.list_pods() if p.name.startswith(self.prefix)}
                # Stopped pods are left as they are (their volume stays); dead ones only after the grace.
                for pid in self.deaths.look(i for i, p in pods.items() if p.state is PodState.DEAD):
                    try:
                        self.client.terminate_pod(pid)
                        self.deaths.forget(pid)
                    except RunPodError:
                        pass  # still dead at the next refresh: tried again
                self._pods = {i: p for i, p in pods.items() if p.state.usable}
                self._listed_at = time.monotonic()
            return self._pods

    def _pod(self, node_id: str) -> Pod | None:
        pod = self._refresh().get(node_id)
        return pod if pod is not None else self._refresh(force=True).get(node_id)

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        pods = self._refresh(force=True)
        return [i for i in pods if all(self.node_tags(i).get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id: str) -> bool:
        pod = self._pod(node_id)
        return pod is not None and pod.state is PodState.RUNNING

    def is_terminated(self, node_id: str) -> bool:
        return self._pod(node_id) is None

    def node_tags(self, node_id: str) -> dict[str, str]:
        with self._lock:
            pod = self._pods.get(node_id)
            return {**(pod.ray_tags if pod else {}), **self._tags.get(node_id, {})}

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            self._tags.setdefault(node_id, {}).update(tags)
            self._save_tags()

    def external_ip(self, node_id: str) -> str | None:
        pod = self._pod(node_id)
        return pod.ssh.host if pod and pod.ssh else None  # None until the container is up: Ray waits

    def internal_ip(self, node_id: str) -> str | None:
        pod = self._pod(node_id)
        if pod is None:
            return None
        return pod.private_ip or (pod.ssh.host if pod.ssh else None)

    def ssh_port(self, node_id: str) -> int | None:
        pod = self._pod(node_id)
        return pod.ssh.port if pod and pod.ssh else None

    # -- create and terminate ------------------------------------------------------------------

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        node_type = tags.get("ray-user-node-type", "node")
        cfg = parse_pod_config(node_config, f"cluster.yaml: available_node_types.{node_type}.node_config")
        created: dict[str, Any] = {}
        for _ in range(count):
            name = f"{self.prefix}{node_type}-{uuid.uuid4().hex[:8]}"
            pod = self.client.create_pod(cfg, name, ray_tags={**tags, "ray-cluster-name": self.cluster_name})
            with self._lock:
                self._pods[pod.id] = pod
            created[pod.id] = pod
        return created

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # The node's labels (pod id, GPU type and count, $/h) are set by the pod itself when it
        # starts Ray (cluster.yaml: worker_start_ray_commands), from what RunPod knows of it.
        return self.create_node(node_config, tags, count)

    def terminate_node(self, node_id: str) -> None:
        self.client.terminate_pod(node_id)
        with self._lock:
            self._pods.pop(node_id, None)
            if self._tags.pop(node_id, None) is not None:
                self._save_tags()

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name, process_runner, use_internal_ip, docker_config=None):
        runner = super().get_command_runner(log_prefix, node_id, auth_config, cluster_name, process_runner, use_internal_ip, docker_config)
        port = self.ssh_port(node_id)
        ssh = runner.ssh_command_runner if not isinstance(runner, SSHCommandRunner) else runner
        if port and not use_internal_ip:
            ssh.ssh_options.arg_dict["Port"] = port
        return runner

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        """Check every node type's node_config before anything is rented."""
        for name, nt in (cluster_config.get("available_node_types") or {}).items():
            try:
                parse_pod_config(nt.get("node_config"), f"cluster.yaml: available_node_types.{name}.node_config")
            except SpecError as e:
                raise ValueError(str(e)) from None
        return cluster_config

    # -- tags file -----------------------------------------------------------------------------

    def _load_tags(self) -> dict[str, dict[str, str]]:
        try:
            doc = json.loads(self.tags_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ValueError(f"{self.tags_path}: not JSON; remove it (the tags Ray set at creation are kept in the pods)") from None
        if doc.get("version") != TAGS_VERSION:
            raise ValueError(f"{self.tags_path}: version {doc.get('version')!r} is not one this code reads ({TAGS_VERSION})")
        return {str(k): dict(v) for k, v in (doc.get("nodes") or {}).items()}

    def _save_tags(self) -> None:
        self.tags_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tags_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": TAGS_VERSION, "cluster": self.cluster_name, "nodes": self._tags}, sort_keys=True))
        os.replace(tmp, self.tags_path)
