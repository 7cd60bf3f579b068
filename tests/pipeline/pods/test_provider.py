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


@pytest.mark.parametrize("status, terminated_by_provider", [("EXITED", True), ("DEAD", True), ("TERMINATED", False), ("MIGRATING", False)])
def test_a_pod_that_died_leaves_the_cluster_so_the_autoscaler_replaces_it(runpod, provider, status, terminated_by_provider):
    alive = runpod.add_pod(name="ray-golf-eval_1xh100-aaaa", count=1)
    dead = runpod.add_pod(name="ray-golf-eval_1xh100-bbbb", count=1, status=status)
    assert provider.non_terminated_nodes({}) == [alive]
    assert provider.is_terminated(dead) and not provider.is_running(dead)
    # Stopped and dead pods cannot rejoin: terminated so they stop billing; unknown ones are left alone.
    assert ("podTerminate" in runpod.ops()) == terminated_by_provider
    assert (dead not in runpod.pods) == terminated_by_provider


def test_a_tags_file_of_another_version_is_one_line(runpod, tmp_path):
    (tmp_path / "tags.json").write_text('{"version": 99, "nodes": {}}')
    with pytest.raises(ValueError, match=r"tags.json: version 99 is not one this code reads \(1\)$"):
        RunPodNodeProvider({"tags_file": str(tmp_path / "tags.json")}, "golf")
