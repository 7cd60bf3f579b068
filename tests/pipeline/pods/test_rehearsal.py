"""`ray up cluster.yaml` against the pod farm (pipeline/pods/rehearsal.py's farm variant of
cluster.yaml, RunPodNodeProvider behind the local RunPod API): the head pod is rented, the code
synced, Ray started with the pod's labels; `ray down` ends every pod. With PIPELINE_FARM_LONG=1 the
long rehearsal: the autoscaler rents an eval pod for waiting tasks, replaces it when it dies, and
ends it when idle (minutes on a 2-core machine, so not in `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

from pipeline.pods.client import RunPodClient
from pipeline.pods.rehearsal import farm_cluster_config
from tests.pipeline.pods.test_farm import figure, on_pod, ray_nodes, ssh_cmd

ROOT = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).parent / "ray"
LONG = os.environ.get("PIPELINE_FARM_LONG") == "1"


def launcher(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the launcher imports this checkout's provider
    r = subprocess.run([str(RAY), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return r


def cluster_pods(prefix: str = "ray-farm-") -> list:
    return [p for p in RunPodClient.from_env().list_pods() if p.name.startswith(prefix)]


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(2)


@pytest.fixture
def cluster_file(farm_world, tmp_path):
    if shutil.which("rsync") is None:  # `ray up` syncs file_mounts with it
        pytest.skip("no rsync on this machine (ray up copies the code with it): `make ssh-server` installs it as root")
    cfg = farm_cluster_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()), farm_world.farm)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yield path
    subprocess.run([str(RAY), "down", "-y", str(path)], capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_ray_up_rents_the_head_pod_syncs_the_code_starts_ray_and_ray_down_ends_it(farm_world, cluster_file):
    world = farm_world
    t0 = time.monotonic()
    launcher("up", "-y", "--no-config-cache", str(cluster_file))
    figure("ray up (head pod rented, code synced, Ray started)", time.monotonic() - t0)
    [head] = cluster_pods()
    assert head.name.startswith("ray-farm-train_8xh100-") and head.ray_tags[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
    synced = world.farm.pods[head.id].dir / "workspace" / "pipeline"
    assert (synced / "pipeline" / "pods" / "provider.py").read_bytes() == (ROOT / "pipeline/pods/provider.py").read_bytes()
    [node] = ray_nodes(world, head.ssh.host)
    assert node["alive"] and node["pod"] == head.id and node["gpus"] == 2
    assert "no pip install" in on_pod(world, head.ssh.host, "cd /workspace/pipeline && .venv/bin/python -m pipeline.pods.image").stdout

    if LONG:
        long_rehearsal(world, head)

    launcher("down", "-y", str(cluster_file))
    assert cluster_pods() == [] and world.farm.pods == {}


WAITING = """import os, ray, sys, time
ray.init(address="auto")
@ray.remote(num_gpus=1, max_retries=3)
def hold(flag):
    while not os.path.exists(flag):  # until the test releases them: demand lasts as long as it must
        time.sleep(1)
    return ray.get_runtime_context().get_node_labels().get("runpod.io/pod-id")
print(sorted(ray.get([hold.remote(sys.argv[1]) for _ in range(4)])))
"""


def long_rehearsal(world, head) -> None:
    """4 one-GPU tasks on a 2-GPU head, held until released: the autoscaler rents 2 eval pods; one
    dies, its task waits again, and the autoscaler replaces the pod; once the tasks are released and
    done, the idle pods are ended (idle_timeout_minutes: 1)."""
    script, flag = world.farm.pods[head.id].dir / "workspace" / "waiting.py", world.farm.root / "release"
    script.write_text(WAITING)
    job = subprocess.Popen([*ssh_cmd(world, head.ssh.host), f"cd /workspace/pipeline && .venv/bin/python /workspace/waiting.py {flag}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    t0 = time.monotonic()
    evals = "ray-farm-eval_1xh100-"
    first = wait_for("an eval pod rented", lambda: cluster_pods(evals), 180)[0]
    figure("tasks wait -> eval pod rented", time.monotonic() - t0)
    wait_for("the eval pod in Ray", lambda: any(n["alive"] and n["pod"] == first.id for n in ray_nodes(world, head.ssh.host)), 300)
    figure("tasks wait -> eval pod in Ray", time.monotonic() - t0)
    t1, known = time.monotonic(), {p.id for p in cluster_pods(evals)}
    world.farm.end_pod(first.id)  # the pod dies: RunPod still says RUNNING; Ray stops hearing from it
    wait_for("the dead pod terminated", lambda: first.id not in {p.id for p in cluster_pods(evals)}, 300)
    figure("eval pod death -> terminated by the autoscaler", time.monotonic() - t1)
    [new] = wait_for("a replacement eval pod", lambda: [p for p in cluster_pods(evals) if p.id not in known][:1], 300)
    figure("eval pod death -> replacement rented", time.monotonic() - t1)
    wait_for("the replacement in Ray", lambda: any(n["alive"] and n["pod"] == new.id for n in ray_nodes(world, head.ssh.host)), 300)
    figure("eval pod death -> replacement in Ray", time.monotonic() - t1)
    flag.write_text("")
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    t2 = time.monotonic()
    wait_for("the idle eval pods ended", lambda: not cluster_pods(evals), 400)
    figure("tasks done -> idle eval pods ended", time.monotonic() - t2)
