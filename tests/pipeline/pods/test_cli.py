"""`pipeline pods ...` as a user types it, against the local RunPod API (and sshd for `ssh`)."""

from __future__ import annotations

from pathlib import Path

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
    assert code == 0 and sorted(p["name"] for p in runpod.pods.values()) == ["ev-0", "ev-1", "golf-train"]
    assert {"key": "A", "value": "1"} in runpod.pods[max(runpod.pods)]["create_input"]["env"]


def test_up_with_bad_input_is_one_line_and_rents_nothing(runpod, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code, _, err = run(capsys, "up", "--type", "nope", "--name", "x")
    assert code == 2 and err == "error: cluster.yaml: available_node_types: no node type 'nope' (have train_8xh100, eval_1xh100)\n"
    code, _, err = run(capsys, "up", "--gpu-type", "NVIDIA H100 80GB HBM3", "--gpu-count", "0", "--name", "x")
    assert code == 2 and err.startswith("error: pipeline pods up: gpu_count: Input should be greater than or equal to 1")
    (tmp_path / "c.yaml").write_text("available_node_types: {t: {node_config: {gpu_type_id: X, ports: ['22']}}}\n")
    code, _, err = run(capsys, "up", "--type", "t", "--cluster-config", str(tmp_path / "c.yaml"), "--name", "x")
    assert code == 2 and "c.yaml: available_node_types.t.node_config: ports: Value error, '22' is not a port" in err
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
    code, out, _ = run(capsys, "ssh", *flags, a, "--", "echo", "hello;", "exit", "5")
    assert code == 5 and out == "hello\n"
    assert run(capsys, "ssh", *flags, a)[1] == f"ssh -i {sshd.client_key} -p {sshd.port} root@127.0.0.1\n"
    code, _, err = run(capsys, "ssh", "--key", str(sshd.client_key), "--known-hosts", str(tmp_path / "empty"), a, "true")
    assert code == 2 and "unknown host key" in err and err.count("\n") == 1


def test_watch_once_reports_health_and_stops_nothing_before_idle_stop_min(runpod, capsys, tmp_path):
    a = runpod.add_pod()
    b = runpod.add_pod(status="DEAD")
    code, out, _ = run(capsys, "watch", "--once", "--terminate-dead")
    # without --ray a RUNNING pod is RunPod's word: alive, never terminated for want of a Ray node
    assert code == 0 and f"{a}: alive" in out and "no idle stops" in out and f"{b}: dead (RunPod status DEAD)" in out and f"{b}: terminated (dead)" in out
    assert a in runpod.pods and b not in runpod.pods


def test_watch_stops_a_pod_idle_for_the_specs_idle_stop_min(runpod, ray_local, capsys, tmp_path, monkeypatch):
    import time

    import yaml

    import pipeline.pods.cli as pods_cli
    from tests.conftest import make_spec

    spec = make_spec(tmp_path, str(tmp_path / "store"), cluster={"idle_stop_min": 0.0001, "accelerator": "cpu"})  # paths are not read
    assert "idle_stop_min" not in str(spec.fingerprint_dict())  # how it runs, not what the campaign is
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    a = runpod.add_pod(count=1)
    ticks, real_sleep = [], time.sleep

    def sleep(s):  # the loop's wait between looks: two looks, then the user presses ^C
        ticks.append(s)
        if len(ticks) == 2:
            raise KeyboardInterrupt
        real_sleep(0.05)

    monkeypatch.setattr(pods_cli.time, "sleep", sleep)
    # the Ray this process is connected to (ray_local) lists no node of the pod: none of its GPUs is held
    code, out, _ = run(capsys, "watch", "--spec", str(tmp_path / "c.yaml"), "--interval", "0.05", "--ray", "auto")
    assert code == 130 and runpod.pods[a]["desiredStatus"] == "EXITED"
    assert f"{a} (1× H100 80GB HBM3, $2.69/h): no unit used it for 0 min: stopped" in out
