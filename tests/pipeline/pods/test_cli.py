"""`pipeline pods ...` as a user types it, against the local RunPod API (and sshd for `ssh`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[3]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["pods", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_status_health_price_uptime_cost_and_ssh(runpod, capsys):
    a = runpod.add_pod(uptime=7200, ssh=("203.0.113.7", 40022), name="train")
    b = runpod.add_pod(status="EXITED", name="old")
    c = runpod.add_pod(status="SOMETHING_NEW", name="odd")
    code, out, _ = run(capsys, "list", "-v")
    assert code == 0
    row = next(ln for ln in out.splitlines() if ln.startswith(a))
    assert "RUNNING" in row and "alive" in row and "8× H100 80GB HBM3" in row and "2.69" in row and "2h00m" in row
    assert "5.38" in row and row.endswith("203.0.113.7:40022")
    assert "dead" in next(ln for ln in out.splitlines() if ln.startswith(b))
    assert "dead" in next(ln for ln in out.splitlines() if ln.startswith(c)) and "SOMETHING_NEW (unknown)" in out
    assert runpod.key not in out


def test_cost_sums_uptime_times_price(runpod, capsys):
    runpod.add_pod(uptime=3600)
    runpod.add_pod(uptime=1800, gpu="NVIDIA GeForce RTX 4090", count=1)
    code, out, _ = run(capsys, "cost")
    assert code == 0 and "= $2.69" in out and "= $0.34" in out and out.splitlines()[-1].startswith("total $3.04 over 2 pod(s)")


def test_up_from_a_cluster_yaml_node_type_and_from_flags(runpod, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run(capsys, "up", "--type", "train_8xh100", "--name", "golf-train")
    assert code == 0, out
    [pod] = runpod.pods.values()
    assert pod["create_input"]["gpuCount"] == 8 and pod["create_input"]["ports"] == "22/tcp,8265/http"
    code, out, _ = run(capsys, "up", "--gpu-type", "NVIDIA GeForce RTX 4090", "--count", "2", "--name", "ev", "--env", "A=1")
    # every pod is named for its cluster (cluster.yaml's cluster_name, or --cluster): how watch knows its own
    assert code == 0 and sorted(p["name"] for p in runpod.pods.values()) == ["ray-golf-ev-0", "ray-golf-ev-1", "ray-golf-golf-train"]
    assert {"key": "A", "value": "1"} in runpod.pods[max(runpod.pods)]["create_input"]["env"]
    assert run(capsys, "up", "--gpu-type", "NVIDIA GeForce RTX 4090", "--name", "x", "--cluster", "mine")[0] == 0
    assert "ray-mine-x" in [p["name"] for p in runpod.pods.values()]


def test_up_with_bad_input_is_one_line_and_rents_nothing(runpod, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code, _, err = run(capsys, "up", "--type", "nope", "--name", "x")
    assert code == 2 and err == "error: cluster.yaml: available_node_types: no node type 'nope' (have train_8xh100, eval_1xh100)\n"
    code, _, err = run(capsys, "up", "--gpu-type", "NVIDIA H100 80GB HBM3", "--gpu-count", "0", "--name", "x")
    assert code == 2 and err.startswith("error: pipeline pods up: gpu_count: Input should be greater than or equal to 1")
    (tmp_path / "c.yaml").write_text("available_node_types: {t: {node_config: {gpu_type_id: X, ports: ['22']}}}\n")
    code, _, err = run(capsys, "up", "--type", "t", "--cluster-config", str(tmp_path / "c.yaml"), "--name", "x")
    assert code == 2 and "c.yaml: available_node_types.t.node_config: ports: Value error, '22' is not a port" in err
    code, _, err = run(capsys, "up", "--gpu-type", "NVIDIA H100 80GB HBM3", "--name", "x", "--cluster-config", str(tmp_path / "none.yaml"))
    assert code == 2 and err == f"error: pods up: give --cluster NAME (pods are named ray-NAME-...), or a --cluster-config with cluster_name ({tmp_path / 'none.yaml'} does not exist)\n"
    assert runpod.pods == {}


def test_stop_resume_terminate(runpod, capsys):
    a = runpod.add_pod()
    assert run(capsys, "stop", a)[:2] == (0, f"{a}: EXITED\n")
    assert run(capsys, "resume", a)[:2] == (0, f"{a}: RUNNING\n")
    code, _, err = run(capsys, "terminate", a)
    assert code == 2 and "add --yes" in err and a in runpod.pods
    assert run(capsys, "terminate", a, "--yes")[:2] == (0, f"{a}: terminated\n") and runpod.pods == {}


def test_api_errors_are_one_line_exit_2_without_the_key(runpod, capsys, monkeypatch):
    runpod.fail_next(403, {"errors": [{"message": f"denied for {runpod.key}"}]})
    code, out, err = run(capsys, "list")
    assert code == 2 and err == "error: RunPod API: myself: HTTP 403: the key in RUNPOD_API_KEY was refused: denied for ***\n"
    monkeypatch.delenv("RUNPOD_API_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")
    code, _, err = run(capsys, "cost")
    assert code == 2 and err.startswith("error: RUNPOD_API_KEY is not set")
    assert run(capsys, "stop", "nope")[0] == 2


def test_ssh_runs_a_command_streaming_its_output_and_exit_status(runpod, sshd, capsys, tmp_path):
    a = runpod.add_pod(ssh=("127.0.0.1", sshd.port))
    flags = ["--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts(tmp_path / "kh"))]
    code, out, _ = run(capsys, "ssh", *flags, a, "--", "echo hello; exit 5")  # one argument: a shell command line
    assert code == 5 and out == "hello\n"
    code, out, _ = run(capsys, "ssh", *flags, a, "--", "printf", "[%s]\\n", "two words", "it's", "$HOME;", "exit", "5")
    assert code == 0 and out == "[two words]\n[it's]\n[$HOME;]\n[exit]\n[5]\n"  # several: each kept as quoted
    assert run(capsys, "ssh", *flags, a)[1] == f"ssh -i {sshd.client_key} -p {sshd.port} root@127.0.0.1\n"
    code, _, err = run(capsys, "ssh", "--key", str(sshd.client_key), "--known-hosts", str(tmp_path / "empty"), a, "true")
    assert code == 2 and "unknown host key" in err and err.count("\n") == 1


def test_watch_once_reports_the_clusters_pods_and_names_the_ones_it_leaves_alone(runpod, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # cluster.yaml: cluster_name golf
    a = runpod.add_pod(name="ray-golf-train")
    b = runpod.add_pod(status="DEAD", name="ray-golf-eval-0")
    theirs = runpod.add_pod(name="alice-notebook")
    code, out, _ = run(capsys, "watch", "--once")
    # without --ray a RUNNING pod is RunPod's word: alive; nothing is stopped or terminated
    assert code == 0 and f"{a}: alive" in out and "no idle stops" in out and f"{b}: dead (RunPod status DEAD)" in out
    assert "leaving 3 pod(s) alone: " in out and f"not in this cluster: {theirs}" in out and theirs + ":" not in out
    code, _, err = run(capsys, "watch", "--once", "--terminate-dead")
    assert code == 2 and err == "error: pods watch: --terminate-dead needs --ray ADDRESS: a pod is terminated only once its Ray node is gone too\n"
    assert len(runpod.pods) == 3 and runpod.ops().count("podTerminate") == runpod.ops().count("podStop") == 0


def test_watch_goes_on_after_an_api_error(runpod, capsys, monkeypatch):
    import pipeline.pods.commands as pods_cli

    a = runpod.add_pod(name="ray-golf-train")
    runpod.fail_next(200, {"data": None, "errors": [{"message": "Something went wrong."}]})
    looks = []

    def sleep(s):  # the loop's wait between looks: two looks, then the user presses ^C
        looks.append(s)
        if len(looks) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pods_cli.time, "sleep", sleep)
    code, out, _ = run(capsys, "watch", "--cluster", "golf", "--interval", "7")
    assert code == 130
    assert "RunPod API: myself: Something went wrong.: nothing stopped or terminated at this look; looking again in 7 s\n" in out
    assert f"{a}: alive" in out  # the second look


@pytest.mark.heavy  # a Ray instance of its own
def test_watch_stops_an_idle_pod_of_the_cluster_and_leaves_a_colleagues_alone(runpod, capsys, tmp_path, monkeypatch):
    import time

    import ray
    import yaml

    import pipeline.pods.commands as pods_cli
    from pipeline.records.nodes import LABEL_POD_ID
    from tests.conftest import make_spec

    spec = make_spec(tmp_path, str(tmp_path / "store"), cluster={"idle_stop_min": 0.0001, "accelerator": "cpu"})  # paths are not read
    assert "idle_stop_min" not in str(spec.fingerprint_dict())  # how it runs, not what the campaign is
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    a = runpod.add_pod(count=1, name="ray-golf-eval-0")
    colleague = runpod.add_pod(count=1, name="alice-notebook")  # RUNNING, no node in this Ray cluster: "idle" to base
    ticks, real_sleep = [], time.sleep

    def sleep(s):  # the loop's wait between looks: two looks, then the user presses ^C
        ticks.append(s)
        if len(ticks) == 2:
            raise KeyboardInterrupt
        real_sleep(0.05)

    # this process's Ray is the cluster: one node, the pod `a`, none of whose GPUs a unit holds
    ray.init(address="local", num_cpus=1, num_gpus=1, labels={LABEL_POD_ID: a}, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    monkeypatch.setattr(pods_cli.time, "sleep", sleep)
    try:
        code, out, _ = run(capsys, "watch", "--spec", str(tmp_path / "c.yaml"), "--interval", "0.05", "--ray", "auto", "--cluster", "golf")
    finally:
        monkeypatch.setattr(pods_cli.time, "sleep", real_sleep)
        ray.shutdown()
    assert code == 130 and runpod.pods[a]["desiredStatus"] == "EXITED"
    assert f"{a} (1× H100 80GB HBM3, $2.69/h): no unit used it for 0 min: stopped" in out
    assert runpod.pods[colleague]["desiredStatus"] == "RUNNING" and f"leaving 1 pod(s) alone: not in this cluster: {colleague}" in out
