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


RAY_BLOCKS = 'echo "Ray runtime started."\nwhile true; do sleep 1; done'


def _pod_dir(tmp_path: Path, python: str, ray: str = RAY_BLOCKS) -> Path:
    """A pod directory whose `.venv` holds stand-ins: each logs its arguments to CALLS; `python`
    answers as its script says; `ray` by default prints what `ray start --block` prints, then blocks."""
    d = tmp_path / "pod"
    (d / ".venv" / "bin").mkdir(parents=True)
    for name, body in (("python", python), ("ray", ray)):
        f = d / ".venv" / "bin" / name
        f.write_text(f'#!/bin/sh\necho "{name} $*" >> {d}/CALLS\n{body}\n')
        f.chmod(0o755)
    return d


def _bootstrap_args(runpod, sshd, tmp_path: Path, pod_dir: Path) -> list[str]:
    pod = runpod.add_pod(gpu="NVIDIA H100 80GB HBM3", count=1, ssh=("127.0.0.1", sshd.port))
    return ["pods", "bootstrap", pod, "--head", "127.0.0.1:6379", "--dir", str(pod_dir), "--cpu-pod",
            "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts(tmp_path / "kh"))]  # fmt: skip


@linux_only
def test_ray_node_pid_is_ray_start_itself_and_leaving_ends_it(sshd, runpod, tmp_path, capsys):
    """The pid file names the `ray start` process, not the shell around it: leaving the cluster (or
    a re-bootstrap) ends that node instead of leaving it running."""
    pod_dir = _pod_dir(tmp_path, "exit 0")  # `import pipeline, ray` succeeds: the code counts as installed
    (pod_dir / ".pipeline-install.json").write_text(json.dumps({"version": INSTALL_VERSION, "digest": project_bundle().digest}))
    assert main(_bootstrap_args(runpod, sshd, tmp_path, pod_dir)) == 0, capsys.readouterr().err
    pid = int((pod_dir / "ray-node.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [str(pod_dir / ".venv" / "bin" / "ray").encode(), b"start"], cmdline
    from pipeline.pods.bootstrap import leave_ray
    from pipeline.pods.ssh import SSH, SSHTarget

    with SSH(SSHTarget("127.0.0.1", sshd.port, key_file=str(sshd.client_key), known_hosts=tmp_path / "kh")) as s:
        assert leave_ray(s, str(pod_dir))
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b" ")[2]


# Ray's head on a slow host: it joins, then its Ray Client server (which gave up waiting for the
# raylet) takes it down; the second start holds.
RAY_DIES_ONCE = """echo "Ray runtime started."
if [ ! -e "$(dirname "$0")/started-once" ]; then
  touch "$(dirname "$0")/started-once"; sleep 1
  echo "Some Ray subprocesses exited unexpectedly: ray_client_server [exit code=1]"; exit 1
fi
while true; do sleep 1; done"""


@linux_only
def test_a_ray_start_that_dies_after_joining_is_started_again_once(sshd, runpod, tmp_path, capsys):
    pod_dir = _pod_dir(tmp_path, "exit 0", RAY_DIES_ONCE)
    (pod_dir / ".pipeline-install.json").write_text(json.dumps({"version": INSTALL_VERSION, "digest": project_bundle().digest}))
    args = _bootstrap_args(runpod, sshd, tmp_path, pod_dir)
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    starts = [ln for ln in (pod_dir / "CALLS").read_text().splitlines() if ln.startswith("ray start")]
    assert len(starts) == 2, starts
    assert "ray start exited (Some Ray subprocesses exited unexpectedly: ray_client_server [exit code=1]); starting it again" in out.out + out.err
    pid = int((pod_dir / "ray-node.pid").read_text())
    assert Path(f"/proc/{pid}").exists()  # the second start runs

    # one that dies every time: bootstrap fails with its last line, after the second try
    (pod_dir / ".venv" / "bin" / "started-once").unlink()
    (pod_dir / ".venv" / "bin" / "ray").write_text('#!/bin/sh\necho "Ray runtime started."\nsleep 1\necho "gcs: address in use"\nexit 1\n')
    from pipeline.pods.bootstrap import leave_ray
    from pipeline.pods.ssh import SSH, SSHTarget

    with SSH(SSHTarget("127.0.0.1", sshd.port, key_file=str(sshd.client_key), known_hosts=tmp_path / "kh")) as s:
        assert leave_ray(s, str(pod_dir))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"ray start exited: gcs: address in use (log: {pod_dir}/ray-node.log on the pod)"), err


PIP_FAILS = """case "$*" in
  "-m pipeline.pods.image") echo "unmet: ray[default,train]>=2.40: not installed"; exit 1 ;;
  "-c import torch") exit 1 ;;
  "-c import pipeline, ray") exit 1 ;;
  *"install -q -e ."*)
    echo "Collecting ray[train]"; echo "ERROR: No matching distribution found for ray[train]"
    echo "[notice] A new release of pip is available: 24.0 -> 25.1"; echo "[notice] To update, run: pip install --upgrade pip"
    exit 1 ;;
esac
exit 0"""


@linux_only
def test_failed_install_names_pips_error_and_a_pod_without_torch_gets_the_pinned_one(sshd, runpod, tmp_path, capsys):
    pod_dir = _pod_dir(tmp_path, PIP_FAILS)
    assert main(_bootstrap_args(runpod, sshd, tmp_path, pod_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("install (pip install -e .) exited 1: ERROR: No matching distribution found for ray[train]"), err
    from pipeline.pods.bootstrap import torch_requirement

    pin = torch_requirement()
    make_pin = next(ln.split("?=")[1].strip() for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("TORCH ?="))
    assert pin == make_pin
    calls = (pod_dir / "CALLS").read_text().splitlines()
    assert calls.index(f"python -m pip install -q {pin}") < calls.index("python -m pip install -q -e .")
    assert not (pod_dir / ".pipeline-install.json").exists()


def test_why_line_prefers_the_error_over_trailing_notices():
    from pipeline.pods.ssh import why_line

    assert why_line("a\nERROR: boom\n[notice] To update, run: pip install --upgrade pip\n") == "ERROR: boom"
    assert why_line("Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'ray'\n") == "ModuleNotFoundError: No module named 'ray'"
    assert why_line("last words\n\n") == "last words"
    assert why_line("[notice] only\n") == "[notice] only"
    assert why_line("") == ""
