"""What each `pipeline pods` subcommand does (pipeline/pods/cli.py parses and dispatches): list,
cost, up, stop, resume, terminate, ssh, bootstrap, labels, watch. The work is in client, ssh,
bootstrap, health and idle; these functions read the parsed flags and print."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

DEFAULT_DIR = "/workspace/pipeline"


def _client():
    from pipeline.pods.client import RunPodClient

    return RunPodClient.from_env()


def _find(client, pod_id: str):
    pod = client.get_pod(pod_id)
    if pod is None:
        raise LookupError(f"no pod {pod_id} in this RunPod account (`pipeline pods list`)")
    return pod


def _target(args, pod):
    from pipeline.pods.ssh import SSHTarget

    if pod.ssh is None:
        raise LookupError(f"{pod.id}: no public SSH port (RunPod {pod.status}; the pod needs '22/tcp' in its ports)")
    known = Path(args.known_hosts).expanduser() if args.known_hosts else None
    return SSHTarget(pod.ssh.host, pod.ssh.port, args.user, args.key, known, args.trust_new_host, args.ssh_timeout)


def _host_port(value: str) -> tuple[str, int] | None:
    """HOST:PORT (a bracketed IPv6 host too), or None when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or any(c.isspace() or c in "/@" for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


RAY_PROBE_S = 5.0  # a GCS that is up accepts at once; one that is not would make ray.init retry for minutes


def _ray_connect(address: str) -> None:
    """Join the Ray cluster at --ray, or one line saying why not. ray.init retries an address with
    no GCS for minutes, so a HOST:PORT (or ray://HOST:PORT) is first tried with a short connect."""
    import socket

    import ray

    hp = _host_port(address.removeprefix("ray://"))
    if address not in ("auto", "local") and hp is None:
        raise ValueError(f"--ray {address}: not a Ray address: give HOST:PORT (the head's GCS, e.g. 127.0.0.1:6379), ray://HOST:PORT or auto")
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=RAY_PROBE_S).close()
        except OSError as e:
            why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            raise ValueError(f"--ray {address}: no Ray answers there ({why} after at most {RAY_PROBE_S:g} s): is the head up, and is that its GCS port?") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError) as e:
        raise ValueError(f"--ray {address}: cannot join the Ray cluster: {' '.join(str(e).split())[:200]}") from None


def _ray_view(address: str | None):
    if not address:
        return None
    import ray

    from pipeline.pods.health import ray_pod_nodes

    if not ray.is_initialized():
        _ray_connect(address)
    return ray_pod_nodes()


def _ssh_probe(args):
    from pipeline.pods.ssh import SSH, SSHError

    def probe(pod) -> str | None:
        try:
            with SSH(_target(args, pod)) as s:
                s.check("true", timeout_s=args.ssh_timeout)
            return None
        except (SSHError, LookupError) as e:
            return str(e)

    return probe


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cmd_list(args) -> int:
    from pipeline.pods.health import pod_health

    pods = _client().list_pods()
    nodes = _ray_view(args.ray)
    probe = _ssh_probe(args) if args.ssh else None
    print(f"{'id':<16} {'name':<24} {'status':<11} {'health':<11} {'gpus':<22} {'$/h':>6} {'uptime':>7} {'cost':>8}  ssh")
    for p in pods:
        h = pod_health(p, nodes, probe)
        ssh = f"{p.ssh.host}:{p.ssh.port}" if p.ssh else "-"
        gpus = f"{p.gpu_count}× {p.gpu_type}"[:22]
        print(f"{p.id:<16} {p.name[:24]:<24} {p.status[:11] or '-':<11} {h.verdict.value:<11} {gpus:<22} {p.cost_per_hr:>6.2f} {_hms(p.uptime_s):>7} {p.cost_so_far:>8.2f}  {ssh}")
        if args.verbose:
            print(f"    {h.reason}")
    return 0


def cmd_cost(args) -> int:
    pods = _client().list_pods()
    total = 0.0
    for p in pods:
        total += p.cost_so_far
        print(f"{p.id:<16} {p.name[:24]:<24} {p.status or '-':<11} {_hms(p.uptime_s):>7} × ${p.cost_per_hr:.2f}/h = ${p.cost_so_far:.2f}")
    print(f"total ${total:.2f} over {len(pods)} pod(s) (each pod's current uptime × its price; stopped time is not GPU-billed)")
    return 0


# `pods up` flags that describe the pod (PodConfig's fields); --type takes them from cluster.yaml.
_UP_FLAGS = ("gpu_type", "gpu_count", "image", "container_disk_gb", "volume_gb", "network_volume_id", "cloud_type")


def _cluster_doc(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a cluster config (a mapping with cluster_name, available_node_types)")
    return doc


def _cluster_name(args, what: str) -> str:
    """The cluster whose pods this command rents or acts on: --cluster, else cluster_name of
    --cluster-config (its pods are named `ray-<cluster>-...`, docs/pods.md: Pods)."""
    name = args.cluster
    if not name:
        path = Path(args.cluster_config)
        if not path.is_file():
            raise ValueError(f"{what}: give --cluster NAME (pods are named ray-NAME-...), or a --cluster-config with cluster_name ({path} does not exist)")
        name = _cluster_doc(path).get("cluster_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: cluster_name: missing; or give --cluster NAME")
    if any(c.isspace() for c in name):
        raise ValueError(f"{what}: --cluster {name!r}: no spaces in a cluster name")
    return name


def _pod_config(args):
    from pipeline.spec import parse_pod_config

    if args.count < 1:
        raise ValueError(f"pods up: --count {args.count}: must be at least 1")
    env = {}
    for e in args.env or ():
        k, eq, v = e.partition("=")
        if not eq:
            raise ValueError(f"pods up: --env {e}: give NAME=VALUE")
        env[k] = v
    if args.type:
        given = [f for f in _UP_FLAGS if getattr(args, f) is not None] + (["env"] if env else [])
        if given:  # the node type says all of it: a flag beside it would be dropped without a word
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"pods up: {flags}: not used with --type {args.type} (its node_config in {args.cluster_config} says it); drop them or leave out --type")
        path = Path(args.cluster_config)
        types = _cluster_doc(path).get("available_node_types") or {}
        if args.type not in types:
            raise ValueError(f"{path}: available_node_types: no node type {args.type!r} (have {', '.join(types) or 'none'})")
        return parse_pod_config(types[args.type].get("node_config"), f"{path}: available_node_types.{args.type}.node_config")
    if not args.gpu_type:
        raise ValueError("pods up: give --type (a node type of cluster.yaml) or --gpu-type")
    raw = {"gpu_type_id": args.gpu_type, "gpu_count": 1 if args.gpu_count is None else args.gpu_count, "env": env}
    for k in _UP_FLAGS[2:]:
        if getattr(args, k) is not None:
            raw[k] = getattr(args, k)
    return parse_pod_config(raw, "pipeline pods up")


def cmd_up(args) -> int:
    from pipeline.pods.pod import cluster_prefix

    cfg = _pod_config(args)
    prefix = cluster_prefix(_cluster_name(args, "pods up"))  # how `pods watch` knows the cluster's pods
    client = _client()
    for i in range(args.count):
        name = prefix + (args.name if args.count == 1 else f"{args.name}-{i}")
        pod = client.create_pod(cfg, name)
        print(f"{pod.id}: {name}, {cfg.gpu_count}× {cfg.gpu_type_id}, ${pod.cost_per_hr:.2f}/h, RunPod {pod.status or 'created'}")
    print("next: `pipeline pods list` until it is RUNNING with an ssh address, then `pipeline pods bootstrap POD --head ...`")
    return 0


def cmd_stop(args) -> int:
    from pipeline.pods.client import RunPodError

    client = _client()
    failed = []
    for pid in args.pods:  # one unknown id does not keep the others running (and billing)
        try:
            print(f"{pid}: {client.stop_pod(_find(client, pid).id) or 'stopped'}")
        except (RunPodError, LookupError) as e:
            failed.append(str(e))
    if failed:
        stopped = len(args.pods) - len(failed)
        raise LookupError(f"pods stop: {'; '.join(failed)} ({stopped} of {len(args.pods)} stopped)")
    return 0


def cmd_resume(args) -> int:
    client = _client()
    pod = _find(client, args.pod)
    print(f"{pod.id}: {client.resume_pod(pod.id, args.gpu_count or pod.gpu_count) or 'resumed'}")
    return 0


def cmd_terminate(args) -> int:
    if not args.yes:
        raise ValueError(f"pods terminate: {' '.join(args.pods)}: terminating deletes the pod and its volume; add --yes")
    client = _client()
    for pid in args.pods:
        client.terminate_pod(pid)
        print(f"{pid}: terminated")
    return 0


def cmd_ssh(args) -> int:
    from pipeline.pods.ssh import SSH

    pod = _find(_client(), args.pod)
    t = _target(args, pod)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        key = f" -i {args.key}" if args.key else ""
        print(f"ssh{key} -p {t.port} {t.user}@{t.host}")
        return 0
    with SSH(t, log=lambda m: print(m, file=sys.stderr)) as s:
        # One argument is a command line for the pod's shell (`-- 'cd x && make'`); several are
        # argv, each kept whole as the user quoted it (`-- ls 'my dir'`; ssh would join them with spaces).
        line = command[0] if len(command) == 1 else shlex.join(command)
        code, _ = s.run(line, out=lambda line: print(line, flush=True), timeout_s=args.timeout)
    return code


def _ray_token(args) -> str | None:
    if args.ray_token_file:
        try:
            return Path(args.ray_token_file).expanduser().read_text().strip() or None
        except OSError as e:
            raise FileNotFoundError(f"--ray-token-file {args.ray_token_file}: cannot read: {e.strerror}") from None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    default = Path("~/.ray/auth_token").expanduser()
    return default.read_text().strip() if default.is_file() else None


def cmd_bootstrap(args) -> int:
    from pipeline.pods.bootstrap import bootstrap
    from pipeline.pods.ssh import SSH

    if args.head != "self" and _host_port(args.head) is None:
        raise ValueError(f"pods bootstrap: --head {args.head}: not an address: give HOST:PORT (the Ray head as the pod reaches it, e.g. 10.0.0.5:6379) or 'self'")
    pod = _find(_client(), args.pod)
    token = _ray_token(args)
    with SSH(_target(args, pod), log=print) as s:
        r = bootstrap(
            s, pod, args.head, args.dir, cpu_pod=args.cpu_pod, ray_token=token, node_ip=args.node_ip,
            python=args.python, ray_args=tuple(args.ray_arg or ()), log=print,
        )  # fmt: skip
    print(f"{r.pod_id}: in the Ray cluster at {args.head} with {r.num_gpus} GPU(s); labels " + ",".join(f"{k}={v}" for k, v in r.labels.items()))
    return 0


def cmd_labels(args) -> int:
    """The Ray labels of the pod this runs on (cluster.yaml's start commands use it)."""
    from pipeline.pods.bootstrap import pod_labels

    pod_id = os.environ.get("RUNPOD_POD_ID")
    if not pod_id:
        raise ValueError("pods labels: RUNPOD_POD_ID is not set: not on a RunPod pod")
    print(",".join(f"{k}={v}" for k, v in pod_labels(_find(_client(), pod_id)).items()))
    return 0


def cmd_watch(args) -> int:
    from pipeline.pods.client import RunPodError
    from pipeline.pods.health import DeadGrace, DeathWatch
    from pipeline.pods.idle import IdleStopper
    from pipeline.pods.watch import ClusterScope, PodWatch

    if args.dead_looks < 1 or args.dead_grace_min < 0:
        raise ValueError(f"pods watch: --dead-looks {args.dead_looks} / --dead-grace-min {args.dead_grace_min:g}: need at least 1 look and 0 or more minutes")
    if args.terminate_dead and not args.ray:
        raise ValueError("pods watch: --terminate-dead needs --ray ADDRESS: a pod is terminated only once its Ray node is gone too")
    idle_min = args.idle_stop_min
    if idle_min is None and args.spec:
        from pipeline.spec import load_spec

        idle_min = load_spec(args.spec).cluster.idle_stop_min
    scope = ClusterScope(_cluster_name(args, "pods watch"))
    client = _client()
    stopper = IdleStopper(client, idle_min if idle_min is not None else 10.0, head_pod_id=args.head_pod, log=print)
    grace = DeadGrace(args.dead_looks, args.dead_grace_min * 60.0)
    deaths = DeathWatch(grace) if args.terminate_dead else None
    watch = PodWatch(client, scope, stopper, deaths, _ssh_probe(args) if args.ssh else None, log=lambda m: print(m, flush=True))
    print(
        f"watching the pods named {scope.prefix}* that are in this Ray cluster"
        + (f"; terminating the dead ones after {grace}" if deaths else "")
        if args.ray else "no --ray: health from RunPod alone, and no idle stops (which GPUs units hold is Ray's to say)",
        flush=True,
    )  # fmt: skip
    while True:
        try:
            pods = client.list_pods()
            watch.look(pods, _ray_view(args.ray))  # None without --ray: not "Ray lists no pods"
        except RunPodError as e:
            if args.once:
                raise
            print(f"{e}: nothing stopped or terminated at this look; looking again in {args.interval:g} s", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)
