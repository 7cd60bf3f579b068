"""`make pod-farm`: rehearse a campaign on pods before renting any. Starts the pod farm
(pipeline/pods/farm.py) behind the local RunPod API (pipeline/pods/fake_api.py) and a moto S3 server,
both on the farm's bridge address so every pod reaches them, writes cluster.yaml's farm variant
(farm_cluster_config) and the environment that points `ray up`, `pipeline pods` and boto3 at them,
and runs until Ctrl-C, when every pod ends. Needs root and `ip netns`.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from pipeline.pods.farm import Farm, FarmError

ROOT = Path(__file__).resolve().parents[2]
FARM_GPU = "NVIDIA GeForce RTX 4090"  # a type the local API rents (its price list)
# Farm pods share this machine's cores and memory: small Ray nodes, GPUs logical (no NVIDIA driver).
_OBJECT_STORE = "--object-store-memory=150000000"


def farm_cluster_config(base: dict[str, Any], farm: Farm, idle_timeout_minutes: float = 1.0) -> dict[str, Any]:
    """cluster.yaml for the farm: the same commands, the provider and launcher reach pods through the
    local API and the farm's key; small nodes with logical GPUs (2 on the head, 1 per eval pod)."""
    cfg = copy.deepcopy(base)
    cfg["cluster_name"] = "farm"
    cfg["max_workers"] = 2
    cfg["idle_timeout_minutes"] = idle_timeout_minutes
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(farm.key)}
    head = cfg["head_node_type"]
    for name, nt in cfg["available_node_types"].items():
        gpus = 2 if name == head else 1
        nt["node_config"].update(gpu_type_id=FARM_GPU, gpu_count=gpus, min_vcpu=1, min_memory_gb=1)
        nt["resources"] = {"CPU": 4, "GPU": gpus}
        if name != head:
            nt["max_workers"] = 2
    # the key is in the pods' environment (RUNPOD_API_KEY), not a file; the code is this checkout
    cfg["file_mounts"] = {"/workspace/pipeline": str(ROOT)}
    cfg["setup_commands"] = [c for c in cfg["setup_commands"] if "nvidia-smi" not in c]  # no NVIDIA driver
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cfg[key] = [c.replace("/bin/ray start ", f"/bin/ray start {_OBJECT_STORE} ") for c in cfg[key]]
    return cfg


def main(argv: list[str] | None = None) -> int:
    from moto.server import ThreadedMotoServer

    from pipeline.pods.fake_api import FakeRunPod

    ap = argparse.ArgumentParser(prog="pod-farm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="pod-farm", help="where the farm keeps its pods, key, cluster.yaml and env (default: pod-farm)")
    ap.add_argument("--cluster", default=str(ROOT / "cluster.yaml"), help="the cluster.yaml to rehearse")
    args = ap.parse_args(argv)
    d = Path(args.dir).resolve()
    why = Farm.missing()
    if why:
        print(f"error: pod-farm: {why}")
        return 2
    try:
        base = yaml.safe_load(Path(args.cluster).read_text())
    except (OSError, yaml.YAMLError) as e:
        print(f"error: pod-farm: {args.cluster}: {' '.join(str(e).split())}")
        return 2
    farm = Farm.free(d)
    try:
        farm.up()
    except FarmError as e:
        print(f"error: pod-farm: {e}")
        return 2
    api = FakeRunPod(host=farm.host_ip, machines=farm)
    api.start()
    s3 = ThreadedMotoServer(ip_address=farm.host_ip, port=0, verbose=False)
    s3.start()
    try:
        host, port = s3.get_host_and_port()
        env = {"RUNPOD_API_URL": api.url, "RUNPOD_API_KEY": api.key, "AWS_ENDPOINT_URL": f"http://{host}:{port}",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        farm.env.update(env)
        (d / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        (d / "env").chmod(0o600)
        (d / "cluster.yaml").write_text(yaml.safe_dump(farm_cluster_config(base, farm), sort_keys=False))
        print(
            f"pod farm up: pods on {farm.bridge} ({farm.subnet}.0/24), RunPod API {api.url}, S3 {env['AWS_ENDPOINT_URL']}\n"
            f"  source {d}/env\n"
            f"  ray up -y {d}/cluster.yaml --no-config-cache      # head pod rented, code synced, Ray started\n"
            f"  .venv/bin/python -m pipeline pods list\n"
            f"  ray job submit --address http://HEAD_IP:8265 --working-dir . -- /workspace/pipeline/.venv/bin/python -m pipeline run CAMPAIGN.yaml\n"
            f"  .venv/bin/python -m pipeline pods terminate POD   # a pod dies: its processes and namespace go\n"
            f"  ray down -y {d}/cluster.yaml\n"
            "Ctrl-C ends the farm and every pod."
        )
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
    finally:
        farm.down()
        api.stop()
        s3.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
