"""`pipeline pods ...` refuses bad input in one line, exit 2, before it rents or changes a pod
(against the local RunPod API; no Ray, no sshd)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[3]
H100 = "NVIDIA H100 80GB HBM3"


def refused(capsys, *argv) -> str:
    capsys.readouterr()
    code = main(["pods", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (code, err)
    return err.strip()


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--gpu-type", H100, "--env", "NOEQUALS"], "error: pods up: --env NOEQUALS: give NAME=VALUE"),
        (["--gpu-type", H100, "--env", "HF_TOKEN=hf_abc"], "error: pipeline pods up: env: Value error, HF_TOKEN: looks like a credential, and "
         "RunPod shows a pod's env to everyone on the account; use a RunPod secret ('{{ RUNPOD_SECRET_name }}')"),
        (["--gpu-type", H100, "--env", "AWS_SECRET_ACCESS_KEY=x"], "AWS_SECRET_ACCESS_KEY: looks like a credential"),
        (["--gpu-type", H100, "--count", "0"], "error: pods up: --count 0: must be at least 1"),
        (["--type", "eval_1xh100", "--gpu-count", "8", "--image", "mine", "--env", "A=1"],
         "error: pods up: --gpu-count, --image, --env: not used with --type eval_1xh100 (its node_config in cluster.yaml says it); "
         "drop them or leave out --type"),
    ],
)
def test_up_refuses_bad_flags_and_rents_nothing(runpod, capsys, monkeypatch, argv, line):
    monkeypatch.chdir(ROOT)
    err = refused(capsys, "up", "--name", "x", *argv)
    assert err == line if line.startswith("error: ") else line in err
    assert runpod.pods == {} and "podFindAndDeployOnDemand" not in runpod.ops()
    assert "hf_abc" not in err


def test_up_passes_a_runpod_secret_reference(runpod, capsys):
    assert main(["pods", "up", "--name", "x", "--gpu-type", H100, "--env", "HF_TOKEN={{ RUNPOD_SECRET_hf }}"]) == 0
    [pod] = runpod.pods.values()
    assert {"key": "HF_TOKEN", "value": "{{ RUNPOD_SECRET_hf }}"} in pod["create_input"]["env"]


def test_stop_stops_the_known_pods_and_names_the_rest(runpod, capsys):
    a, b = runpod.add_pod(), runpod.add_pod()
    capsys.readouterr()
    code = main(["pods", "stop", a, "nope1", b])
    out = capsys.readouterr()
    assert code == 2 and out.out == f"{a}: EXITED\n{b}: EXITED\n"
    assert out.err == "error: pods stop: no pod nope1 in this RunPod account (`pipeline pods list`) (2 of 3 stopped)\n"
    assert runpod.pods[a]["desiredStatus"] == runpod.pods[b]["desiredStatus"] == "EXITED"


@pytest.mark.parametrize("head", ["nothost", "10.0.0.5:port", "10.0.0.5:0", "10.0.0.5:70000", "user@10.0.0.5:6379"])
def test_bootstrap_refuses_a_head_that_is_not_an_address(runpod, capsys, head):
    a = runpod.add_pod()
    err = refused(capsys, "bootstrap", a, "--head", head)
    assert err == f"error: pods bootstrap: --head {head}: not an address: give HOST:PORT (the Ray head as the pod reaches it, e.g. 10.0.0.5:6379) or 'self'"
    assert runpod.ops() == []  # refused before RunPod (and SSH) is asked anything


@pytest.mark.parametrize("command", ["list", "watch"])
def test_ray_address_without_ray_is_one_line_not_a_hang(runpod, capsys, command):
    runpod.add_pod()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    extra = ["--once"] if command == "watch" else []
    err = refused(capsys, command, "--ray", f"127.0.0.1:{port}", *extra)
    assert err == (f"error: --ray 127.0.0.1:{port}: no Ray answers there (Connection refused after at most 5 s): "
                   "is the head up, and is that its GCS port?")
    err = refused(capsys, command, "--ray", "http://x", *extra)
    assert err.startswith("error: --ray http://x: not a Ray address")


def test_a_key_file_others_can_read_is_refused(runpod, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".runpod_api_key"
    key.write_text(runpod.key + "\n")
    key.chmod(0o644)
    err = refused(capsys, "list")
    assert err == f"error: {key}: the RunPod key file is open to other users (mode 0644): chmod 600 {key}"
    assert runpod.key not in err and runpod.ops() == []
    key.chmod(0o600)
    assert main(["pods", "list"]) == 0 and runpod.ops() == ["myself"]
