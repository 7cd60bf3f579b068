"""The pod farm (pipeline/pods/farm.py): pods the local RunPod API rents are network namespaces with
their own address and sshd; what runs in one cannot touch the host or another pod; a pod's death
is its processes killed and its namespace gone; bootstrap joins farm pods to a Ray head in a pod in
seconds (the pod image has the project's requirements: no pip)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.pods.client import RunPodClient
from pipeline.spec import PodConfig

ROOT = Path(__file__).resolve().parents[3]
FIGURES = os.environ.get("PIPELINE_FARM_FIGURES")  # a file the measured times are appended to


def figure(name: str, seconds: float) -> None:
    print(f"farm figure: {name} {seconds:.1f} s")
    if FIGURES:
        with open(FIGURES, "a") as f:
            f.write(json.dumps({"figure": name, "s": round(seconds, 2)}) + "\n")


def rent(world, name: str, gpus: int = 1):
    client = RunPodClient.from_env()
    cfg = PodConfig(gpu_type_id="NVIDIA GeForce RTX 4090", gpu_count=gpus, cloud_type="SECURE")
    return client.create_pod(cfg, name)


def ssh_cmd(world, ip: str) -> list[str]:
    f = world.farm
    return ["ssh", "-i", str(f.key), "-o", f"UserKnownHostsFile={f.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", f"root@{ip}"]  # fmt: skip


def on_pod(world, ip: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ssh_cmd(world, ip), command], capture_output=True, text=True, timeout=timeout)


def test_a_farm_pod_is_its_own_host_and_its_death_is_total(farm_world, tmp_path):
    world = farm_world
    a, b = rent(world, "ray-farm-a"), rent(world, "ray-farm-b")
    assert a.ssh.port == 22 and a.ssh.host != b.ssh.host and a.private_ip == a.ssh.host
    seen = on_pod(world, a.ssh.host, "echo $RUNPOD_POD_ID $(hostname); ip -4 -br addr show eth0; cat /proc/1/cmdline | tr '\\0' ' '")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split()[:2] == [a.id, a.id] and f"{a.ssh.host}/24" in seen.stdout and "sshd" in seen.stdout

    # A "raylet" on the host and one in pod b: `ray stop --force` in pod a kills neither.
    decoy = tmp_path / "raylet"
    shutil.copy("/bin/sleep", decoy)
    host_raylet = subprocess.Popen([str(decoy), "300"])
    try:
        assert on_pod(world, b.ssh.host, f"setsid nohup {decoy} 300 >/dev/null 2>&1 < /dev/null &").returncode == 0
        ray = Path(sys.executable).parent / "ray"
        stop = on_pod(world, a.ssh.host, f"{ray} stop --force; {ray} stop --force", timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert host_raylet.poll() is None
        assert "raylet" in on_pod(world, b.ssh.host, "ps -eo comm").stdout

        # podTerminate: pod b's processes are gone, its namespace and address with it.
        ns = world.farm.pods[b.id].ns
        assert world.farm.processes(ns)
        RunPodClient.from_env().terminate_pod(b.id)
        assert b.id not in world.farm.pods and not world.farm.processes(ns)
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert on_pod(world, b.ssh.host, "true", timeout=30).returncode != 0
        assert host_raylet.poll() is None and on_pod(world, a.ssh.host, "true").returncode == 0
    finally:
        host_raylet.kill()
        host_raylet.wait()
        RunPodClient.from_env().terminate_pod(a.id)


RAY_ARGS = ("--object-store-memory=150000000", "--num-cpus=4")  # each pod sees this machine's 2 cores


def join(world, pod, head: str, *extra: str) -> dict[str, float]:
    """Bootstrap a farm pod over SSH (code synced, no pip: the image has the requirements, Ray
    started); the seconds the whole bootstrap and its `ray start` → joined part took."""
    from pipeline.pods.bootstrap import bootstrap
    from pipeline.pods.ssh import SSH, SSHTarget

    marks: dict[str, float] = {}

    def log(line: str) -> None:
        if ": joining the Ray cluster" in line:
            marks["join"] = time.monotonic()

    t0 = time.monotonic()
    target = SSHTarget(pod.ssh.host, pod.ssh.port, key_file=str(world.farm.key), known_hosts=world.farm.known_hosts)
    with SSH(target) as s:
        r = bootstrap(s, pod, head, cpu_pod=True, node_ip=pod.ssh.host, ray_args=RAY_ARGS + extra, log=log)
    done = time.monotonic()
    assert r.installed  # the code was synced
    return {"bootstrap": done - t0, "join": done - marks["join"]}


def ray_nodes(world, head_ip: str) -> list[dict]:
    """The head's view of its nodes, asked on the head pod (alive, pod label, GPUs)."""
    code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); print(json.dumps([{'alive': n['Alive'], "
            "'pod': n['Labels'].get('runpod.io/pod-id'), 'gpus': n['Resources'].get('GPU', 0), 'ip': n['NodeManagerAddress']} for n in ray.nodes()]))")  # fmt: skip
    r = on_pod(world, head_ip, f"cd /workspace/pipeline && .venv/bin/python -c \"{code}\"", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def farm_cluster(farm_world):
    """A head pod (no GPUs: the driver) and two worker pods of 2 logical GPUs, bootstrapped."""
    world = farm_world
    head = rent(world, "ray-farm-head")
    times = {"head": join(world, head, "self", "--num-gpus=0")}
    workers = [rent(world, f"ray-farm-worker{i}", gpus=2) for i in (1, 2)]
    for w in workers:
        times[w.id] = join(world, w, f"{head.ssh.host}:6379")
    figure("head bootstrap", times["head"]["bootstrap"])
    figure("head join (ray start -> joined)", times["head"]["join"])
    for w in workers:
        figure("worker bootstrap", times[w.id]["bootstrap"])
        figure("worker join (ray start -> joined)", times[w.id]["join"])
    yield world, head, workers
    for p in RunPodClient.from_env().list_pods():
        RunPodClient.from_env().terminate_pod(p.id)


def test_bootstrap_joins_farm_pods_to_a_head_pod_in_seconds(farm_cluster):
    world, head, workers = farm_cluster
    nodes = ray_nodes(world, head.ssh.host)
    assert sorted((n["pod"], n["gpus"], n["ip"]) for n in nodes if n["alive"]) == sorted(
        [(head.id, 0, head.ssh.host)] + [(w.id, 2, w.ssh.host) for w in workers]
    )
    # the pod's image had the requirements: nothing was pip installed
    marker = json.loads((world.farm.pods[head.id].dir / "workspace/pipeline/.pipeline-install.json").read_text())
    assert marker["digest"]
