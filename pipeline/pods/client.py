"""RunPod's GraphQL API: list, create, stop, resume and terminate on-demand pods.

GraphQL is RunPod's stable API (REST v1 is being retired, v2 is in beta). The key goes in a bearer
header, never in the URL, so no proxy or access log can carry it, and it is scrubbed from anything
the server sends back before that becomes an error message. Every failure is one RunPodError line:
401/403 (the key), 429 (retried with backoff, honouring Retry-After), 5xx and timeouts (retried;
a create that got no answer may have rented the pod, so it is looked up by name before the create
is sent again), GraphQL `errors`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.pods.pod import RAY_TAGS_ENV, Pod, parse_pod
from pipeline.spec import PodConfig

API_URL = "https://api.runpod.io/graphql"
KEY_ENV = "RUNPOD_API_KEY"
URL_ENV = "RUNPOD_API_URL"  # another endpoint (tests, a proxy)
KEY_FILE = Path("~/.runpod_api_key")

_POD_FIELDS = """
  id name desiredStatus costPerHr gpuCount imageName env
  machine { gpuDisplayName }
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } gpus { id gpuUtilPercent } }
"""


class RunPodError(RuntimeError):
    """A RunPod API call failed; `str(err)` is one line without the key."""


class _NoAnswer(RunPodError):
    """A call that must not simply be repeated got no clear answer (timeout, 5xx): it may have happened."""


class RunPodClient:
    def __init__(
        self,
        api_key: str,
        url: str = API_URL,
        timeout_s: float = 30.0,
        max_attempts: int = 6,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise RunPodError(f"{KEY_ENV} is not set (nor {KEY_FILE}): create a key at https://www.runpod.io/console/user/settings")
        self._key = api_key
        self.url = url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._sleep = sleep

    @classmethod
    def from_env(cls, **kw: Any) -> RunPodClient:
        """The key from RUNPOD_API_KEY, else from the file KEY_FILE (where `ray up` mounts it on
        the head, cluster.yaml: file_mounts), so it is never written in a config or a command."""
        key = os.environ.get(KEY_ENV, "")
        path = KEY_FILE.expanduser()
        if not key and path.is_file():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:  # as ssh refuses a private key others can read: the key rents pods on the account
                raise RunPodError(f"{path}: the RunPod key file is open to other users (mode {mode:04o}): chmod 600 {path}")
            key = path.read_text().strip()
        return cls(key, url=os.environ.get(URL_ENV) or API_URL, **kw)

    def __repr__(self) -> str:  # never the key
        return f"RunPodClient({self.url})"

    # -- calls ---------------------------------------------------------------------------------

    def list_pods(self) -> list[Pod]:
        data = self._call("myself", f"query myself {{ myself {{ pods {{ {_POD_FIELDS} }} }} }}", {})
        return [parse_pod(p) for p in ((data.get("myself") or {}).get("pods") or [])]

    def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when the account has no such pod (terminated pods vanish)."""
        q = f"query pod($input: PodFilter) {{ pod(input: $input) {{ {_POD_FIELDS} }} }}"
        d = self._call("pod", q, {"input": {"podId": pod_id}}).get("pod")
        return parse_pod(d) if d else None

    def create_pod(self, cfg: PodConfig, name: str, ray_tags: dict[str, str] | None = None) -> Pod:
        env = dict(cfg.env)
        if ray_tags:
            env[RAY_TAGS_ENV] = json.dumps(ray_tags, sort_keys=True, separators=(",", ":"))
        inp: dict[str, Any] = {
            "cloudType": cfg.cloud_type,
            "gpuCount": cfg.gpu_count,
            "gpuTypeId": cfg.gpu_type_id,
            "name": name,
            "imageName": cfg.image,
            "containerDiskInGb": cfg.container_disk_gb,
            "volumeInGb": cfg.volume_gb,
            "volumeMountPath": cfg.volume_mount_path,
            "minVcpuCount": cfg.min_vcpu,
            "minMemoryInGb": cfg.min_memory_gb,
            "ports": ",".join(cfg.ports),
            "dockerArgs": cfg.docker_args,
            "env": [{"key": k, "value": v} for k, v in sorted(env.items())],
            "startSsh": True,
        }
        if cfg.network_volume_id:
            inp["networkVolumeId"] = cfg.network_volume_id
        q = (
            "mutation podFindAndDeployOnDemand($input: PodFindAndDeployOnDemandInput) "
            f"{{ podFindAndDeployOnDemand(input: $input) {{ {_POD_FIELDS} }} }}"
        )
        op = "podFindAndDeployOnDemand"
        before = {p.id for p in self.list_pods() if p.name == name}  # same-named pods that are not this create's
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                d = self._call(op, q, {"input": inp}, repeatable=False).get(op)
                break
            except _NoAnswer as e:
                try:  # the create may have rented it all the same: never rent a second one
                    rented = [p for p in self.list_pods() if p.name == name and p.id not in before]
                except RunPodError as look:
                    raise RunPodError(f"{e}; it may have rented a pod named {name}, and looking failed ({look}): `pipeline pods list`") from None
                if rented:
                    return rented[0]
                if attempt == self.max_attempts:
                    raise RunPodError(f"{e} (after {attempt} attempts; no pod named {name} was rented)") from None
                self._sleep(delay)
                delay = min(delay * 2, 60.0)
        if not d or not d.get("id"):  # RunPod answers null when no machine has the GPUs
            raise RunPodError(
                f"RunPod API: podFindAndDeployOnDemand: no pod with {cfg.gpu_count}× {cfg.gpu_type_id} "
                f"available in cloud {cfg.cloud_type} now"
            )
        return parse_pod(d)

    def stop_pod(self, pod_id: str) -> str:
        """Stop the container (billing for the GPUs ends; the volume stays); the new status."""
        q = "mutation podStop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }"
        return str((self._call("podStop", q, {"input": {"podId": pod_id}}).get("podStop") or {}).get("desiredStatus") or "")

    def resume_pod(self, pod_id: str, gpu_count: int) -> str:
        q = "mutation podResume($input: PodResumeInput!) { podResume(input: $input) { id desiredStatus } }"
        d = self._call("podResume", q, {"input": {"podId": pod_id, "gpuCount": gpu_count}}).get("podResume")
        return str((d or {}).get("desiredStatus") or "")

    def terminate_pod(self, pod_id: str) -> None:
        # podTerminate returns nothing (no selection set).
        self._call("podTerminate", "mutation podTerminate($input: PodTerminateInput!) { podTerminate(input: $input) }", {"input": {"podId": pod_id}})

    # -- transport -----------------------------------------------------------------------------

    def _call(self, op: str, query: str, variables: dict[str, Any], repeatable: bool = True) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            req = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}", "User-Agent": "pipeline-pods"},
            )
            wait: float | None = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = self._detail(e)
                if e.code in (401, 403):
                    raise RunPodError(f"RunPod API: {op}: HTTP {e.code}: the key in {KEY_ENV} was refused{detail}") from None
                if e.code == 429:
                    wait = _retry_after(e.headers.get("Retry-After"), delay)
                    what = f"HTTP 429 rate limited{detail}"
                elif e.code >= 500:
                    what = f"HTTP {e.code}{detail}"
                    if repeatable:
                        wait = delay
                else:
                    raise RunPodError(f"RunPod API: {op}: HTTP {e.code}{detail}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                what = f"cannot reach {self.url}: {self._scrub(str(reason))}"
                if repeatable:
                    wait = delay
            else:
                return self._data(op, payload)
            if wait is None and not repeatable:  # a 5xx or a timeout: it may have happened
                raise _NoAnswer(f"RunPod API: {op}: {what}")
            if wait is None or attempt == self.max_attempts:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise RunPodError(f"RunPod API: {op}: {what}{tries}")
            self._sleep(wait)
            delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")

    def _data(self, op: str, payload: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(payload)
        except ValueError:
            raise RunPodError(f"RunPod API: {op}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise RunPodError(f"RunPod API: {op}: unexpected answer")
        errors = doc.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else errors
            msg = first.get("message") if isinstance(first, dict) else str(first)
            more = f" (+{len(errors) - 1} more)" if isinstance(errors, list) and len(errors) > 1 else ""
            raise RunPodError(f"RunPod API: {op}: {self._scrub(_one_line(str(msg)))}{more}")
        data = doc.get("data")
        return data if isinstance(data, dict) else {}

    def _detail(self, e: urllib.error.HTTPError) -> str:
        """The server's own words for an HTTP error (its GraphQL error message or a short body)."""
        try:
            raw = e.read()[:2000]
        except OSError:
            return ""
        msg = ""
        try:
            doc = json.loads(raw)
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs and isinstance(errs[0], dict):
                msg = str(errs[0].get("message") or "")
            elif isinstance(doc, dict):
                msg = str(doc.get("error") or doc.get("message") or "")
        except ValueError:
            msg = raw.decode("utf-8", "replace")
        msg = self._scrub(_one_line(msg))[:200]
        return f": {msg}" if msg else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _retry_after(header: str | None, default: float) -> float:
    try:
        return min(max(float(header), 0.0), 120.0) if header else default
    except ValueError:
        return default
