"""`pipeline pods bootstrap POD` over real SSH: this machine is the "pod" (sshd on 127.0.0.1, a pod
of the local RunPod API whose SSH port is that sshd), joining a local Ray head started here with
token auth; the node shows the pod's labels, `pipeline pods list --ray` calls it alive, and it
leaves the cluster by its own pid. The project is already installed at the pod's directory (a
marker of this code's digest and a venv link), so the install step is skipped, as bootstrap does
on a pod that has this code."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.pods.bootstrap import INSTALL_VERSION, project_bundle
from tests.pipeline.pods.conftest import free_port
from tests.pipeline.test_ray_job import _stop_head, linux_only

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    """A head with no GPUs, token auth, its own ports and temp dir; yields (address, token, temp dir)."""
    temp = Path(tempfile.mkdtemp(prefix="rayboot-", dir="/tmp"))  # socket paths must stay short
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    port = free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]  # fmt: skip
    log = open(temp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (temp / "head.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray head did not start:\n" + (temp / "head.log").read_text()[-3000:])
            time.sleep(0.3)
        yield f"127.0.0.1:{port}", token, temp
    finally:
        _stop_head(proc, str(temp))
        log.close()


def _ray_nodes(address: str, token: str) -> list[dict]:
    """Labels, aliveness and GPUs of the head's nodes and our pod view, from a separate driver."""
    code = (
        "import json, ray\nfrom pipeline.pods.health import ray_pod_nodes\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "print(json.dumps({'nodes': [{'labels': n['Labels'], 'alive': n['Alive'], 'gpus': n['Resources'].get('GPU', 0)} for n in ray.nodes()],"
        " 'pods': {k: [v.alive, v.gpus_total, v.gpus_free] for k, v in ray_pod_nodes().items()}}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_only
def test_bootstrap_joins_this_machine_to_ray_with_the_pods_labels(sshd, runpod, ray_head, tmp_path, capsys):
    address, token, temp = ray_head
    pod = runpod.add_pod(gpu="NVIDIA H100 80GB HBM3", count=2, ssh=("127.0.0.1", sshd.port))
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir()
    (pod_dir / ".venv").symlink_to(VENV_BIN.parent)  # the project is installed here already
    (pod_dir / ".pipeline-install.json").write_text(json.dumps({"version": INSTALL_VERSION, "digest": project_bundle().digest}))
    (tmp_path / "token").write_text(token)
    ssh = ["--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts(tmp_path / "kh"))]
    args = ["pods", "bootstrap", pod, "--head", address, "--dir", str(pod_dir), "--ray-token-file", str(tmp_path / "token"),
            "--node-ip", "127.0.0.1", f"--ray-arg=--temp-dir={temp}", "--ray-arg=--num-cpus=1",
            f"--ray-arg=--dashboard-agent-listen-port={free_port()}", *ssh]  # fmt: skip

    # Without --cpu-pod a pod without nvidia-smi is refused (this box has no NVIDIA driver).
    assert main(args) == 2
    assert f"error: {pod}: nvidia-smi not found: no NVIDIA driver on the pod (for a CPU pod with logical GPUs pass --cpu-pod)" in capsys.readouterr().err

    try:
        assert main([*args, "--cpu-pod"]) == 0
        out = capsys.readouterr().out
        assert "already installed" in out and token not in out
        assert f"{pod}: in the Ray cluster at {address} with 2 GPU(s)" in out
        assert (pod_dir / ".ray-auth-token").stat().st_mode & 0o777 == 0o600

        seen = _ray_nodes(address, token)
        [node] = [n for n in seen["nodes"] if n["labels"].get("runpod.io/pod-id") == pod]
        assert node["alive"] and node["gpus"] == 2
        assert {k: v for k, v in node["labels"].items() if k.startswith("runpod.io/")} == {
            "runpod.io/pod-id": pod, "runpod.io/gpu-type": "H100-80GB-HBM3", "runpod.io/gpu-count": "2", "runpod.io/usd-per-hr": "2.6900",
        }  # fmt: skip
        assert seen["pods"] == {pod: [True, 2.0, 2.0]}
    finally:
        from pipeline.pods.bootstrap import leave_ray
        from pipeline.pods.ssh import SSH, SSHTarget

        with SSH(SSHTarget("127.0.0.1", sshd.port, key_file=str(sshd.client_key), known_hosts=tmp_path / "kh")) as s:
            assert leave_ray(s, str(pod_dir))
    assert not (pod_dir / "ray-node.pid").exists()
