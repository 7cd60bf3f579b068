"""The RunPod client against the local GraphQL server: every call, every status, every error a
one-line RunPodError without the key."""

from __future__ import annotations

import pytest

from pipeline.pods.client import RunPodClient, RunPodError
from pipeline.pods.pod import PodState, pod_state
from pipeline.spec import PodConfig


def client(runpod, **kw) -> tuple[RunPodClient, list[float]]:
    slept: list[float] = []
    return RunPodClient.from_env(sleep=slept.append, **kw), slept


def test_list_pods_reads_price_string_uptime_and_public_ssh_port(runpod):
    pid = runpod.add_pod(uptime=1800, ssh=("203.0.113.7", 40022))
    c, _ = client(runpod)
    [pod] = c.list_pods()
    assert pod.id == pid and pod.state is PodState.RUNNING
    assert pod.cost_per_hr == 2.69 and pod.gpu_count == 8 and pod.gpu_type == "H100 80GB HBM3"
    assert pod.ssh.host == "203.0.113.7" and pod.ssh.port == 40022  # the public port mapped to 22, not 22
    assert pod.private_ip == "10.0.0.1"
    assert pod.cost_so_far == pytest.approx(0.5 * 2.69)
    assert runpod.auth_headers[-1] == f"Bearer {runpod.key}" and runpod.key not in runpod.paths[-1]


def test_a_pod_without_runtime_has_no_ssh_and_costs_nothing_yet(runpod):
    runpod.add_pod(status="CREATED")
    [pod] = RunPodClient.from_env().list_pods()
    assert pod.ssh is None and pod.uptime_s == 0 and pod.cost_so_far == 0 and pod.state is PodState.STARTING


@pytest.mark.parametrize(
    "status, state",
    [("CREATED", PodState.STARTING), ("PROVISIONING", PodState.STARTING), ("STARTING", PodState.STARTING),
     ("RESTARTING", PodState.STARTING), ("RUNNING", PodState.RUNNING), ("EXITED", PodState.STOPPED),
     ("PAUSED", PodState.STOPPED), ("DEAD", PodState.DEAD), ("ERROR", PodState.DEAD),
     ("TERMINATED", PodState.TERMINATED), ("MIGRATING", PodState.UNKNOWN), ("", PodState.UNKNOWN), (None, PodState.UNKNOWN)],
)  # fmt: skip
def test_every_status_has_a_state_and_unknown_ones_do_not_crash(runpod, status, state):
    assert pod_state(status) is state
    runpod.add_pod(status=status or "")
    [pod] = RunPodClient.from_env().list_pods()
    assert pod.state is state and pod.status == (status or "")


def test_create_stop_resume_terminate(runpod):
    c = RunPodClient.from_env()
    cfg = PodConfig(gpu_type_id="NVIDIA H100 80GB HBM3", gpu_count=8, env={"HF_HOME": "/workspace/hf"}, network_volume_id="vol1")
    pod = c.create_pod(cfg, "golf-train", ray_tags={"ray-node-kind": "worker"})
    assert pod.gpu_count == 8 and pod.name == "golf-train" and pod.ray_tags == {"ray-node-kind": "worker"}
    sent = runpod.pods[pod.id]["create_input"]
    assert sent["gpuTypeId"] == "NVIDIA H100 80GB HBM3" and sent["cloudType"] == "SECURE" and sent["ports"] == "22/tcp"
    assert sent["networkVolumeId"] == "vol1" and {"key": "HF_HOME", "value": "/workspace/hf"} in sent["env"]
    assert c.get_pod(pod.id).id == pod.id
    assert c.stop_pod(pod.id) == "EXITED" and c.get_pod(pod.id).state is PodState.STOPPED
    assert c.resume_pod(pod.id, 8) == "RUNNING" and c.get_pod(pod.id).state is PodState.RUNNING
    c.terminate_pod(pod.id)
    assert c.get_pod(pod.id) is None and c.list_pods() == []
    assert runpod.ops() == ["myself", "podFindAndDeployOnDemand", "pod", "podStop", "pod", "podResume", "pod", "podTerminate", "pod", "myself"]


def test_no_capacity_is_one_line(runpod):
    with pytest.raises(RunPodError, match=r"^RunPod API: podFindAndDeployOnDemand: no pod with 2× NVIDIA B300 available in cloud SECURE now$"):
        RunPodClient.from_env().create_pod(PodConfig(gpu_type_id="NVIDIA B300", gpu_count=2), "x")


def test_missing_key_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.runpod_api_key either
    with pytest.raises(RunPodError, match=r"^RUNPOD_API_KEY is not set"):
        RunPodClient.from_env()


@pytest.mark.parametrize("code", [401, 403])
def test_refused_key_is_one_line_without_the_key(runpod, code):
    runpod.fail_next(code, {"errors": [{"message": f"bad key {runpod.key}"}]})
    with pytest.raises(RunPodError) as e:
        RunPodClient.from_env().list_pods()
    msg = str(e.value)
    assert msg == f"RunPod API: myself: HTTP {code}: the key in RUNPOD_API_KEY was refused: bad key ***"
    assert runpod.key not in msg and runpod.key not in repr(e.value) and "\n" not in msg


def test_wrong_key_is_refused(runpod, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rp_wrong")
    with pytest.raises(RunPodError, match=r"HTTP 401: the key in RUNPOD_API_KEY was refused: Unauthorized$"):
        RunPodClient.from_env().list_pods()


def test_rate_limit_is_retried_with_backoff_and_retry_after(runpod):
    runpod.add_pod()
    runpod.fail_next(429, headers={"Retry-After": "3"})
    runpod.fail_next(429, times=2)
    c, slept = client(runpod, backoff_s=0.5)
    assert len(c.list_pods()) == 1
    assert slept == [3.0, 1.0, 2.0]  # Retry-After, then the doubling backoff


def test_rate_limit_that_does_not_end_is_one_line(runpod):
    runpod.fail_next(429, times=10)
    c, slept = client(runpod, max_attempts=3)
    with pytest.raises(RunPodError, match=r"^RunPod API: myself: HTTP 429 rate limited: scripted \(after 3 attempts\)$"):
        c.list_pods()
    assert len(slept) == 2


def test_server_errors_are_retried_and_a_create_only_once_no_pod_of_its_name_was_rented(runpod):
    runpod.fail_next(502, b"<html>bad gateway</html>")
    c, slept = client(runpod)
    assert c.list_pods() == [] and len(slept) == 1
    runpod.add_pod(name="x")  # an older pod of the same name is not this create's
    runpod.fail_next(500, {"errors": [{"message": "internal"}]}, op="podFindAndDeployOnDemand")
    pod = c.create_pod(PodConfig(gpu_type_id="NVIDIA H100 80GB HBM3"), "x")
    assert [p["name"] for p in runpod.pods.values()] == ["x", "x"] and pod.id in runpod.pods
    assert runpod.ops()[-4:] == ["myself", "podFindAndDeployOnDemand", "myself", "podFindAndDeployOnDemand"]
    assert len(slept) == 2  # looked by name, found none of its own, sent again


def test_a_create_that_timed_out_but_rented_the_pod_is_found_by_name_not_rented_twice(runpod):
    c, slept = client(runpod, timeout_s=0.3)
    runpod.late = [("podFindAndDeployOnDemand", 2.0)]  # RunPod rents the pod, its answer comes after the client gave up
    pod = c.create_pod(PodConfig(gpu_type_id="NVIDIA H100 80GB HBM3"), "ray-golf-eval-1")
    assert list(runpod.pods) == [pod.id] and pod.name == "ray-golf-eval-1"
    assert runpod.ops().count("podFindAndDeployOnDemand") == 1 and slept == []


def test_a_create_whose_fate_cannot_be_checked_says_so(runpod):
    c, _ = client(runpod, max_attempts=1)
    runpod.late = [("podFindAndDeployOnDemand", 2.0), ("myself", 0.0), ("myself", 2.0)]  # the create times out, and so does the look by name after it
    c.timeout_s = 0.3
    with pytest.raises(RunPodError, match=r"^RunPod API: podFindAndDeployOnDemand: cannot reach http://127\.0\.0\.1:\d+/graphql: timed out; it may have rented a pod named x, and looking failed \(RunPod API: myself: cannot reach .*: timed out\): `pipeline pods list`$"):
        c.create_pod(PodConfig(gpu_type_id="NVIDIA H100 80GB HBM3"), "x")


def test_graphql_errors_are_one_line(runpod):
    runpod.fail_next(200, {"data": None, "errors": [{"message": "Something went wrong.\nPlease retry."}, {"message": "b"}]})
    with pytest.raises(RunPodError, match=r"^RunPod API: myself: Something went wrong\. Please retry\. \(\+1 more\)$"):
        RunPodClient.from_env().list_pods()
    with pytest.raises(RunPodError, match=r"^RunPod API: podStop: pod nope not found$"):
        RunPodClient.from_env().stop_pod("nope")


def test_unreachable_api_is_one_line():
    c = RunPodClient("rp_secret", url="http://127.0.0.1:9/graphql", max_attempts=2, sleep=lambda s: None, timeout_s=2)
    with pytest.raises(RunPodError, match=r"^RunPod API: myself: cannot reach http://127.0.0.1:9/graphql: .*\(after 2 attempts\)$") as e:
        c.list_pods()
    assert "rp_secret" not in str(e.value) and "rp_secret" not in repr(c)


def test_the_key_file_is_read_when_the_variable_is_unset(runpod, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".runpod_api_key").write_text(runpod.key + "\n")
    (tmp_path / ".runpod_api_key").chmod(0o600)  # as the README says; open to others it is refused (test_cli_inputs)
    assert RunPodClient.from_env().list_pods() == []
