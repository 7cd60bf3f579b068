"""Shared fixtures: a tiny corpus + tokenizer + shards, a local Ray instance with logical GPUs, and
a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline.spec import CampaignSpec, parse_spec

TINY_MODEL = {"vocab_size": 512, "num_layers": 2, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2, "mlp_mult": 2}


# `make test-fast` runs what is not heavy: no Ray instance, no sshd, no process killed or spawned as a
# group. A test is heavy by the fixtures it asks for, by its module (real kills, its own Ray cluster),
# or by its own @pytest.mark.heavy.
HEAVY_FIXTURES = {"ray_local", "ray_cluster", "ray_head", "sshd", "farm_world"}
HEAVY_MODULES = {
    "test_kill.py", "test_fencing.py", "test_ttt_group.py", "test_script_train.py", "test_ray_job.py",
    "test_capacity.py", "test_campaign_pods.py", "test_dead_nodes.py",  # their own Ray clusters
}


# The longest modules first (measured: pytest --durations), so that `make test`'s two workers, each
# given whole modules in collection order (xdist --dist loadfile), do not end on one long module.
LONGEST_FIRST = (
    "test_farm.py", "test_kill.py", "test_faults.py", "test_script_campaign.py", "test_driver.py", "test_fencing.py",
    "test_ttt_group.py", "test_calibrate.py", "test_rehearsal.py", "test_dead_nodes.py", "test_ray_job.py",
    "test_run_progress.py", "test_train.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(item.fixturenames) or item.path.name in HEAVY_MODULES:
            item.add_marker(pytest.mark.heavy)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


def _busy_cpu_s() -> float:
    """CPU-seconds this machine's cores have been busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With PIPELINE_TEST_CPU=FILE, each test's busy CPU-seconds of the whole machine (its Ray
    processes, pods and subprocesses included), wall seconds and id are appended to FILE, setup and
    teardown included (a module's fixtures count with its first and last test). The suite is CPU-bound
    on 2 cores, so this, not --durations, says what a test costs; it is exact only with one worker
    (`-p no:xdist`) on an otherwise idle machine (README.md: The two commands)."""
    out = os.environ.get("PIPELINE_TEST_CPU")
    if not out:
        yield
        return
    cpu, wall = _busy_cpu_s(), time.monotonic()
    yield
    with open(out, "a") as f:
        f.write(f"{_busy_cpu_s() - cpu:.1f}\t{time.monotonic() - wall:.1f}\t{item.nodeid}\n")


@pytest.fixture(scope="session", autouse=True)
def _digest_cache(tmp_path_factory):
    """Data digests (pipeline/records/campaign.py) cached in the test session's temp dir, not ~/.cache."""
    os.environ["PIPELINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("digest-cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """~600 standard-library docstrings as a .jsonl corpus."""
    from workers.prepare import write_stdlib_corpus

    out = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    write_stdlib_corpus(out, limit=600)
    return out


@pytest.fixture(scope="session")
def data_dir(corpus, tmp_path_factory) -> Path:
    from workers.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare([corpus], vocab_size=TINY_MODEL["vocab_size"], out_dir=out, shard_tokens=50_000)
    return out


def make_spec(data_dir: Path, store: str, **overrides) -> CampaignSpec:
    """A tiny campaign for tests; `overrides` replace top-level keys (dicts are merged one level)."""
    base = {
        "name": "t",
        "store": store,
        "seeds": [1, 2],
        "data": {"shards": str(data_dir), "tokenizer": str(data_dir / "tokenizer.model"), "val_tokens": 3000},
        "model": dict(TINY_MODEL),
        "train": {
            "world_size": 2,
            "gpus_per_worker": 1,
            "max_steps": 6,
            "max_wallclock_s": 120,
            "batch_tokens": 1024,
            "seq_len": 64,
            "warmup_steps": 2,
            "log_every": 2,
        },
        "evals": [{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8}],
        "checkpoint_every_s": 0.0001,
        "cluster": {"accelerator": "cpu", "cpu_threads": 1, "retry_backoff_s": 0.2, "local": {"num_cpus": 4, "num_gpus": 4}},
    }
    for k, v in overrides.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return parse_spec(base)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance per test module: 4 CPUs and 4 logical GPUs on this CPU box."""
    import ray

    # address="local": always a new instance, never some other Ray found on this machine
    ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A multi-node Ray cluster on this machine: a head with no GPUs (where the driver's launcher
    runs) and three nodes with 2 logical GPUs each, any of which a test may remove."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's threaded S3 server on 127.0.0.1, reached by boto3 through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
