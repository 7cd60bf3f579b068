"""The Ray node provider of cluster.yaml against the local RunPod API: Ray's own loader and schema
accept cluster.yaml, nodes are created, tagged, listed, addressed on their mapped SSH port,
replaced when they die, terminated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.pods.provider import RunPodNodeProvider

ROOT = Path(__file__).resolve().parents[3]
TAGS = {"ray-node-kind": "worker", "ray-user-node-type": "eval_1xh100", "ray-node-status": "uninitialized"}


@pytest.fixture
def cluster_config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture
def provider(runpod, cluster_config, tmp_path):
    return RunPodNodeProvider({**cluster_config["provider"], "tags_file": str(tmp_path / "tags.json")}, "golf")


def test_ray_loads_cluster_yaml_and_its_provider(runpod, cluster_config):
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(cluster_config)
    validate_config(cfg)  # Ray's schema
    assert cfg["provider"] == {"type": "external", "module": "pipeline.pods.provider.RunPodNodeProvider"}
    types = cfg["available_node_types"]
    assert types["train_8xh100"]["node_config"]["gpu_count"] == 8 and types["eval_1xh100"]["node_config"]["gpu_count"] == 1
    assert cfg["head_node_type"] == "train_8xh100"
    assert isinstance(_get_node_provider(cfg["provider"], cfg["cluster_name"]), RunPodNodeProvider)
    assert RunPodNodeProvider.bootstrap_config(cfg) is cfg


def test_a_bad_node_config_is_refused_before_anything_is_rented(cluster_config):
    cluster_config["available_node_types"]["eval_1xh100"]["node_config"]["gpu_cnt"] = 1
    with pytest.raises(ValueError, match=r"^cluster.yaml: available_node_types.eval_1xh100.node_config: gpu_cnt: unknown key$"):
        RunPodNodeProvider.bootstrap_config(cluster_config)


def test_create_tag_list_address_terminate(runpod, provider, cluster_config, tmp_path):
    runpod.ssh_endpoint = ("198.51.100.4", 42022)
    other = runpod.add_pod(name="my-notebook")  # not the cluster's: never listed or touched
    node_config = cluster_config["available_node_types"]["eval_1xh100"]["node_config"]
    created = provider.create_node_with_resources_and_labels(node_config, TAGS, 2, {"GPU": 1}, {})
    ids = list(created)
    assert len(ids) == 2 and all(runpod.pods[i]["name"].startswith("ray-golf-eval_1xh100-") for i in ids)
    assert sorted(provider.non_terminated_nodes({})) == sorted(ids)
    assert provider.non_terminated_nodes({"ray-user-node-type": "train_8xh100"}) == []
    a = ids[0]
    assert provider.is_running(a) and not provider.is_terminated(a)
    assert provider.external_ip(a) == "198.51.100.4" and provider.ssh_port(a) == 42022
    assert provider.internal_ip(a).startswith("10.0.0.")
    assert provider.node_tags(a)["ray-node-status"] == "uninitialized"

    provider.set_node_tags(a, {"ray-node-status": "up-to-date"})
    assert provider.non_terminated_nodes({"ray-node-status": "up-to-date"}) == [a]
    # A new provider (the autoscaler restarted) reads creation tags from the pods and later ones from its file.
    again = RunPodNodeProvider({"tags_file": str(tmp_path / "tags.json")}, "golf")
    assert again.non_terminated_nodes({"ray-node-status": "up-to-date"}) == [a]
    assert again.node_tags(ids[1])["ray-user-node-type"] == "eval_1xh100"

    provider.terminate_node(a)
    assert a not in runpod.pods and provider.is_terminated(a) and provider.non_terminated_nodes({}) == [ids[1]]
    assert other in runpod.pods


def test_the_command_runner_uses_the_mapped_ssh_port(runpod, provider, cluster_config):
    import subprocess

    runpod.ssh_endpoint = ("198.51.100.4", 42022)
    [pid] = provider.create_node(cluster_config["available_node_types"]["eval_1xh100"]["node_config"], TAGS, 1)
    runner = provider.get_command_runner("x", pid, {"ssh_user": "root", "ssh_private_key": "/k"}, "golf", subprocess, False)
    assert runner.ssh_options.arg_dict["Port"] == 42022
    assert "Port=42022" in runner.ssh_options.to_ssh_options_list()


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("status", ["EXITED", "PAUSED", "DEAD", "TERMINATED", "MIGRATING"])
def test_a_pod_that_stopped_or_died_leaves_the_cluster_so_the_autoscaler_replaces_it(runpod, provider, status):
    alive = runpod.add_pod(name="ray-golf-eval_1xh100-aaaa", count=1)
    gone = runpod.add_pod(name="ray-golf-eval_1xh100-bbbb", count=1, status=status)
    assert provider.non_terminated_nodes({}) == [alive]
    assert provider.is_terminated(gone) and not provider.is_running(gone)
    # one look at it is never a reason to end it: a stopped pod keeps its volume, a dead one gets its grace
    assert "podTerminate" not in runpod.ops() and gone in runpod.pods


def test_a_stopped_pod_keeps_its_volume_and_a_dead_one_is_ended_after_the_grace_period(runpod, cluster_config, tmp_path):
    clock = Clock()
    provider = RunPodNodeProvider({**cluster_config["provider"], "tags_file": str(tmp_path / "tags.json")}, "golf", clock=clock)
    stopped = runpod.add_pod(name="ray-golf-eval_1xh100-aaaa", count=1)
    dead = runpod.add_pod(name="ray-golf-eval_1xh100-bbbb", count=1, status="DEAD")
    odd = runpod.add_pod(name="ray-golf-eval_1xh100-cccc", count=1, status="MIGRATING")
    theirs = runpod.add_pod(name="ray-other-eval_1xh100-dddd", count=1, status="DEAD")
    runpod.pods[stopped].update(desiredStatus="EXITED", runtime=None)  # `pipeline pods stop`, or an idle stop
    for minute in range(0, 7):  # the autoscaler asks every few seconds; one look a minute here
        clock.t = minute * 60.0
        assert provider.non_terminated_nodes({}) == []
        assert (dead in runpod.pods) == (minute < 5), minute  # 3 looks, and >= 5 min since the first
    assert runpod.pods[stopped]["desiredStatus"] == "EXITED" and odd in runpod.pods and theirs in runpod.pods
    assert [v["input"]["podId"] for op, v in runpod.calls if op == "podTerminate"] == [dead]
    # what the autoscaler chooses to end, it ends
    provider.terminate_node(stopped)
    assert stopped not in runpod.pods


def test_a_tags_file_of_another_version_is_one_line(runpod, tmp_path):
    (tmp_path / "tags.json").write_text('{"version": 99, "nodes": {}}')
    with pytest.raises(ValueError, match=r"tags.json: version 99 is not one this code reads \(1\)$"):
        RunPodNodeProvider({"tags_file": str(tmp_path / "tags.json")}, "golf")
