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

        # podStop ends the host; podResume gives the pod a new one (new address, new host key)
        client = RunPodClient.from_env()
        client.stop_pod(a.id)
        assert a.id not in world.farm.pods
        client.resume_pod(a.id, 1)
        again = client.get_pod(a.id)
        assert again.ssh.host != a.ssh.host and on_pod(world, again.ssh.host, "echo $RUNPOD_POD_ID").stdout.strip() == a.id
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
        # 4 Ray nodes on 2 cores beside the other test worker's cluster: a join can take minutes
        r = bootstrap(s, pod, head, cpu_pod=True, node_ip=pod.ssh.host, ray_args=RAY_ARGS + extra, log=log, join_timeout_s=300)
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
    """A head pod (no GPUs: the driver) and three worker pods of 2 logical GPUs, bootstrapped (the
    workers at once, as the autoscaler starts them)."""
    from concurrent.futures import ThreadPoolExecutor

    world = farm_world
    head = rent(world, "ray-farm-head")
    times = join(world, head, "self", "--num-gpus=0")
    figure("head bootstrap", times["bootstrap"])
    figure("head join (ray start -> joined)", times["join"])
    workers = [rent(world, f"ray-farm-worker{i}", gpus=2) for i in (1, 2, 3)]
    with ThreadPoolExecutor(len(workers)) as pool:
        for t in pool.map(lambda w: join(world, w, f"{head.ssh.host}:6379"), workers):
            figure("worker bootstrap", t["bootstrap"])
            figure("worker join (ray start -> joined)", t["join"])
    yield world, head, workers
    for p in RunPodClient.from_env().list_pods():
        RunPodClient.from_env().terminate_pod(p.id)


def test_bootstrap_joins_farm_pods_to_a_head_pod_in_seconds(farm_cluster):
    world, head, workers = farm_cluster
    nodes = ray_nodes(world, head.ssh.host)
    assert sorted((n["pod"], n["gpus"], n["ip"]) for n in nodes if n["alive"]) == sorted(
        [(head.id, 0, head.ssh.host)] + [(w.id, 2, w.ssh.host) for w in workers]
    )  # fmt: skip
    # the pod's image had the requirements: nothing was pip installed
    marker = json.loads((world.farm.pods[head.id].dir / "workspace/pipeline/.pipeline-install.json").read_text())
    assert marker["digest"]


def submit(head_ip: str, spec, tmp_path: Path, env: dict[str, str]):
    """`ray job submit` of `pipeline run` to the head pod's dashboard (the repo as working_dir)."""
    import yaml
    from ray.job_submission import JobSubmissionClient

    f = tmp_path / f"campaign-{time.monotonic_ns()}.yaml"  # this machine's /tmp: the pods see it too
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    client = JobSubmissionClient(f"http://{head_ip}:8265")
    deadline = time.monotonic() + 60
    while True:
        try:
            job = client.submit_job(entrypoint=f"/workspace/pipeline/.venv/bin/python -m pipeline run {f}",
                                    runtime_env={"working_dir": str(ROOT), "env_vars": env})  # fmt: skip
            return client, job
        except RuntimeError as e:  # the dashboard answers before the head's job agent registered
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def finish(client, job, timeout: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job {job} still {status} after {timeout:g}s:\n{client.get_job_logs(job)[-4000:]}")
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-6000:]
    return client.get_job_logs(job)


def events(store_uri: str) -> list[dict]:
    from pipeline.records.ledger import Ledger
    from pipeline.store import Layout, open_store

    try:
        return Ledger(open_store(store_uri), Layout("t"), "look").events()
    except Exception:  # the campaign has not written its ledger yet
        return []


def placed(store_uri: str) -> list[dict]:
    return [e for e in events(store_uri) if e.get("event") == "placed"]


def bpbs(store_uri: str, seeds) -> dict[int, float]:
    from pipeline.store import Layout, open_store

    store = open_store(store_uri)
    return {s: store.get_json(Layout("t").result(s, "sw"))["val_bpb"] for s in seeds}


def kill_when(world, store_uri: str, unit_prefix: str, timeout: float) -> tuple[str, str, float]:
    """Kill the pod where the first attempt of a unit starting with `unit_prefix` runs, once it
    runs (training: once it has written a checkpoint); (unit, pod, kill time)."""
    from pipeline.store import Layout, open_store

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in placed(store_uri):
            if not e["unit"].startswith(unit_prefix) or e.get("pod") not in world.farm.pods:
                continue
            store, layout, parts = open_store(store_uri), Layout("t"), e["unit"].split("/")
            if unit_prefix == "train/" and (not store.list(layout.train_dir(int(parts[1])) + "/ckpt")
                                            or store.exists(layout.manifest(int(parts[1])))):
                continue  # no checkpoint yet, or trained already
            if unit_prefix == "eval/" and store.exists(layout.shard_done(int(parts[1]), parts[2], int(parts[3]))):
                continue  # that shard is done already
            at = time.time()
            world.farm.end_pod(e["pod"])  # the machine vanishes: RunPod still says RUNNING
            return e["unit"], e["pod"], at
        time.sleep(0.2)
    pytest.fail(f"no attempt of {unit_prefix}* ran within {timeout:g}s")


def replaced_after(store_uri: str, unit: str, pod: str, at: float, timeout: float, what: str, job) -> tuple[float, list[str]]:
    """Seconds from the kill to that unit's next attempt starting on another pod (its `placed`
    event), and the errors its attempts were interrupted with; the figures on the way: the driver
    saw the death (INTERRUPTED) and launched the retry. `job` (client, id): a driver that ended
    fails the test at once, with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended(job, f"before {unit} was re-placed after its pod {pod} died", store_uri, unit)
        again = [e for e in placed(store_uri) if e["unit"] == unit and e.get("pod") != pod and e["time"] > at]
        if again:
            first = min(again, key=lambda e: e["time"])
            mine = [e for e in events(store_uri) if e.get("unit") == unit and e.get("event") == "state" and e["time"] > at]
            for state, label in (("INTERRUPTED", "driver saw the death"), ("RUNNING", "retry launched")):
                if t := [e["time"] for e in mine if e.get("state") == state]:
                    figure(f"death -> {label} ({unit}, {what})", min(t) - at)
            errors = [e.get("error", "") for e in mine if e.get("state") == "INTERRUPTED"]
            for e in mine:
                if e.get("state") == "INTERRUPTED":
                    print(f"farm: {unit} interrupted {e['time'] - at:.1f} s after the death: {e.get('error')}")
            retry = [e["time"] for e in mine if e.get("state") == "RUNNING" and e.get("attempt") == first.get("attempt")]
            if retry:
                figure(f"retry launched -> its rank placed ({unit}, {what})", first["time"] - retry[0])
            return first["time"] - at, errors
        time.sleep(0.5)
    ended(job, "", store_uri, unit, fail=f"{unit} was not re-placed within {timeout:g}s of its pod {pod} dying")


def ended(job, when: str, store_uri: str, unit: str, fail: str | None = None) -> None:
    """Fail with the driver's log tail and the unit's events when the job ended (or `fail` is given)."""
    from ray.job_submission import JobStatus

    client, job_id = job
    status = client.get_job_status(job_id)
    if fail is None and status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        return
    mine = [f"{e['time']:.1f} {e.get('event')} {e.get('state', '')} {e.get('error', '')}" for e in events(store_uri) if e.get("unit") == unit]
    pytest.fail(f"{fail or f'the job ended {status} {when}'}; its events:\n" + "\n".join(mine)
                + f"\ndriver log (job {status}):\n{client.get_job_logs(job_id)[-6000:]}")


def campaign(data_dir, store: str, results: Path, **cluster):
    from tests.conftest import make_spec

    return make_spec(
        data_dir, store, seeds=[1, 2], results_dir=str(results),
        data={"val_tokens": 16000},  # eval shards long enough to die in
        train={"world_size": 1, "max_steps": 24, "log_every": 4},
        evals=[{"name": "sw", "seq_len": 64, "stride": 8, "batch_seqs": 8, "shards": 2}],
        cluster={"retry_backoff_s": 0.2, **cluster},
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """The same campaign run here, on a local Ray instance, while the farm starts: the numbers a
    run with no pod deaths gives."""
    import yaml

    d = tmp_path_factory.mktemp("uninterrupted")
    (d / "campaign.yaml").write_text(yaml.safe_dump(campaign(data_dir, str(d / "store"), d / "results").model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(d / "campaign.yaml")], cwd=ROOT, env=env,
                            stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    yield proc, d
    if proc.poll() is None:
        proc.kill()


def test_campaign_across_pods_survives_pod_deaths_mid_training_and_mid_eval(uninterrupted, farm_cluster, data_dir, tmp_path):
    """`ray job submit` of a campaign to the head pod; the pod running a training unit is killed
    mid-training (after a checkpoint), then a pod running an eval shard mid-eval: the units are
    re-placed on other pods and the bpb is the uninterrupted run's, bit for bit."""
    import boto3

    world, head, workers = farm_cluster
    boto3.client("s3").create_bucket(Bucket="farm")
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    store = "s3://farm/kill"
    t0 = time.monotonic()
    client, job = submit(head.ssh.host, campaign(data_dir, store, tmp_path / "results"), tmp_path, env)
    unit, pod, at = kill_when(world, store, "train/", timeout=240)
    took, errors = replaced_after(store, unit, pod, at, 420, "mid-training", (client, job))
    figure(f"death -> re-placed ({unit}, mid-training)", took)
    # the group's launcher hears of its dead rank only from Ray, late: the driver's own view ended it
    assert errors and errors[0].startswith("NodeLost"), errors
    unit, pod, at = kill_when(world, store, "eval/", timeout=300)
    figure(f"death -> re-placed ({unit}, mid-eval)", replaced_after(store, unit, pod, at, 420, "mid-eval", (client, job))[0])
    logs = finish(client, job, timeout=600)
    figure("campaign with two pod deaths", time.monotonic() - t0)
    for line in logs.splitlines():
        if "treated as gone" in line or "died under the attempt" in line:
            print(f"farm: driver: {line}")
    killed = bpbs(store, [1, 2])

    proc, d = uninterrupted
    assert proc.wait(timeout=300) == 0, (d / "log").read_text()[-4000:]
    base = bpbs(str(d / "store"), [1, 2])
    print(f"farm bpb: uninterrupted {base}, with two pod deaths {killed}")
    assert killed == base
