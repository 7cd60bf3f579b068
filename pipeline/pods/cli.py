"""`pipeline pods ...`: RunPod pods from the command line (docs/pods.md: Pods).

Parsing and dispatch only; the work is in client, ssh, bootstrap, health and idle. Every failure is
one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.pods.commands import (
    DEFAULT_DIR, cmd_bootstrap, cmd_cost, cmd_labels, cmd_list, cmd_resume, cmd_ssh, cmd_stop, cmd_terminate, cmd_up,
    cmd_watch,
)


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", help="cluster name: its pods are named ray-CLUSTER-... (default: cluster_name of --cluster-config)")
    p.add_argument("--cluster-config", default="cluster.yaml")


def _ssh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="private key file (default: the ssh agent and ~/.ssh keys)")
    p.add_argument("--user", default="root")
    p.add_argument("--known-hosts", help="known_hosts file (default: PIPELINE_KNOWN_HOSTS or ~/.ssh/known_hosts)")
    p.add_argument("--trust-new-host", action="store_true", help="accept a host key seen for the first time and record it in known_hosts")
    p.add_argument("--ssh-timeout", type=float, default=20.0, help="seconds to connect")


def add_pods_parser(sub) -> None:
    """Register `pipeline pods` on the top-level subparsers."""
    pods = sub.add_parser("pods", help="RunPod pods: list, up, stop, terminate, ssh, bootstrap, cost, watch")
    ps = pods.add_subparsers(dest="pods_command", required=True)

    p = ps.add_parser("list", help="pods with status, health, GPUs, price, uptime, cost so far, ssh address")
    p.add_argument("--ray", metavar="ADDRESS", help="also ask this Ray cluster which pods have a live node")
    p.add_argument("--ssh", action="store_true", help="probe SSH of running pods Ray does not list")
    p.add_argument("-v", "--verbose", action="store_true", help="the reason for each health verdict")
    _ssh_flags(p)
    p.set_defaults(pods_func=cmd_list)

    p = ps.add_parser("cost", help="what each pod has cost so far (uptime × price)")
    p.set_defaults(pods_func=cmd_cost)

    p = ps.add_parser("up", help="rent on-demand pods: a node type of cluster.yaml, or flags")
    p.add_argument("--name", required=True, help="the pod is named ray-CLUSTER-NAME (NAME-i for --count > 1)")
    p.add_argument("--type", help="node type in --cluster-config (e.g. train_8xh100, eval_1xh100)")
    _cluster_flags(p)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--gpu-type", help="RunPod GPU type id, e.g. 'NVIDIA H100 80GB HBM3'")
    p.add_argument("--gpu-count", type=int, help="GPUs of the pod (default 1)")
    p.add_argument("--image")
    p.add_argument("--container-disk-gb", type=int)
    p.add_argument("--volume-gb", type=int)
    p.add_argument("--network-volume-id")
    p.add_argument("--cloud-type", choices=["ALL", "SECURE", "COMMUNITY"])
    p.add_argument("--env", action="append", metavar="K=V")
    p.set_defaults(pods_func=cmd_up)

    p = ps.add_parser("stop", help="stop pods (GPU billing ends, the volume stays)")
    p.add_argument("pods", nargs="+")
    p.set_defaults(pods_func=cmd_stop)

    p = ps.add_parser("resume", help="start a stopped pod again")
    p.add_argument("pod")
    p.add_argument("--gpu-count", type=int)
    p.set_defaults(pods_func=cmd_resume)

    p = ps.add_parser("terminate", help="delete pods and their volumes")
    p.add_argument("pods", nargs="+")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(pods_func=cmd_terminate)

    p = ps.add_parser("ssh", help="run a command on a pod (streamed), or print the ssh command line; flags before POD")
    p.add_argument("pod")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.add_argument("--timeout", type=float, help="seconds the command may run")
    _ssh_flags(p)
    p.set_defaults(pods_func=cmd_ssh)

    _add_bootstrap(ps)

    p = ps.add_parser("labels", help="print the Ray labels of the pod this runs on (for ray start --labels)")
    p.set_defaults(pods_func=cmd_labels)

    _add_watch(ps)
    pods.set_defaults(func=run)


def _add_bootstrap(ps) -> None:
    p = ps.add_parser("bootstrap", help="install the project on a pod, check its GPUs, join it to Ray with its labels")
    p.add_argument("pod")
    p.add_argument("--head", required=True, help="Ray head address HOST:PORT, as the pod reaches it; 'self': make this pod the head (port 6379)")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"project directory on the pod (default {DEFAULT_DIR})")
    p.add_argument("--cpu-pod", action="store_true", help="no NVIDIA GPUs: skip nvidia-smi, give Ray the pod's GPU count as logical slots")
    p.add_argument("--ray-token-file", help="Ray auth token to give the node (default: RAY_AUTH_TOKEN, ~/.ray/auth_token)")
    p.add_argument("--node-ip", help="the pod's address for the other nodes (default: Ray's guess)")
    p.add_argument("--python", default="python3", help="interpreter the pod's venv is made from")
    p.add_argument("--ray-arg", action="append", help="extra `ray start` argument (repeat), e.g. --ray-arg=--num-cpus=16")
    _ssh_flags(p)
    p.set_defaults(pods_func=cmd_bootstrap)


def _add_watch(ps) -> None:
    p = ps.add_parser("watch", help="report the cluster's pods' health changes, stop its pods idle for idle_stop_min; other pods are left alone")
    p.add_argument("--ray", metavar="ADDRESS", help="the campaign's Ray cluster (which pods are in it, which GPUs are in use)")
    _cluster_flags(p)
    p.add_argument("--spec", help="campaign file whose cluster.idle_stop_min to use")
    p.add_argument("--idle-stop-min", type=float, help="minutes (default: the spec's, else 10)")
    p.add_argument("--head-pod", help="the pod running the Ray head: stopped only when every pod is idle")
    p.add_argument("--terminate-dead", action="store_true", help="terminate pods dead at every look over the grace period (never stopped or unknown ones; needs --ray)")
    p.add_argument("--dead-looks", type=int, default=3, help="looks in a row a pod must be seen dead (default 3)")
    p.add_argument("--dead-grace-min", type=float, default=5.0, help="minutes from the first of them, at least (default 5)")
    p.add_argument("--ssh", action="store_true", help="probe SSH of running pods Ray does not list")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--once", action="store_true", help="one look, then exit")
    _ssh_flags(p)
    p.set_defaults(pods_func=cmd_watch)


def run(args) -> int:
    """Run a pods subcommand; its errors are one line and exit 2."""
    from pipeline.pods.bootstrap import BootstrapError
    from pipeline.pods.client import RunPodError
    from pipeline.pods.ssh import SSHError
    from pipeline.spec import SpecError

    try:
        return args.pods_func(args)
    except (RunPodError, SSHError, BootstrapError, SpecError, LookupError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
