"""A driver that starts before its GPU nodes join: the evals wait (saying so) and, once GPUs
join, are planned over them, not over the GPUs the cluster had when the driver started."""

from __future__ import annotations

import threading
import time

from pipeline.run.driver import Driver
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model


def test_evals_are_sharded_over_the_gpus_that_joined_after_the_driver_started(data_dir, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1], data={"val_tokens": 2000})
        commit_random_model(spec, 1)  # trained: only its evals are left, and no GPU to run them
        lines: list[str] = []
        result = {}
        driver = threading.Thread(target=lambda: result.update(report=Driver(spec, log=lines.append).run()))
        driver.start()
        deadline = time.monotonic() + 60
        while not any("evals of seed 1 waits for 1 GPUs; the cluster has 0" in ln for ln in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        cluster.add_node(num_cpus=2, num_gpus=3)  # the pod's GPUs join
        driver.join(300)
        assert not result["report"].failed and not result["report"].waiting
        store = open_store(spec.store)
        assert len(store.get_json(Layout(spec.name).plan(1, "sw"))["shards"]) == 3
        assert store.exists(Layout(spec.name).result(1, "sw"))
    finally:
        ray.shutdown()
        cluster.shutdown()
