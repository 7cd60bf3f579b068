"""`ray job submit` end to end: a real head started with the venv's `ray start --head` (dashboard on,
so the jobs server runs), a campaign submitted through the jobs SDK with the repo as working_dir,
and the refusal of a relative store under a job.

The head is hermetic: its own free ports (GCS, dashboard, dashboard agent, Ray client server — the
last two default to fixed ports another Ray on this machine may hold), its own temp dir, and its own
auth token given by RAY_AUTH_MODE=token + RAY_AUTH_TOKEN (never ~/.ray/auth_token); the SDK sends
that token as an explicit Authorization header, whatever this process's Ray auth state is.
`ray stop` would stop every Ray on the machine, so the head is stopped by its own processes only
(see _stop_head)."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import RAY_JOB_ENV_VAR, _check_store_outlives_job
from pipeline.store import Layout
from tests.conftest import make_spec

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # `ray` and the `python` a job's entrypoint runs

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the head's processes in /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(pid: int) -> tuple[int, str, int] | None:
    """(session id, state, start time) of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[3]), fields[0], int(fields[19])


def _mentions(pid: int, needle: bytes) -> bool:
    for name in ("cmdline", "environ"):  # the job's driver names the session dir in PWD/PYTHONPATH
        try:
            if needle in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            pass
    return False


def _head_processes(head_pid: int, temp_dir: str) -> dict[int, int]:
    """pid -> start time of this head's live processes: its session (`ray start` leads one, and
    GCS, raylet, dashboard and workers stay in it) and anything naming a session dir in its private
    temp dir (the job driver, which the supervisor starts in a new session, has it in PWD). Nothing
    of another Ray matches."""
    found = {}
    needle = f"{temp_dir}{os.sep}session_".encode()  # not a prefix of another dir's name
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        info = _proc(pid)
        if info is None or info[1] == "Z":
            continue
        if info[0] == head_pid or _mentions(pid, needle):
            found[pid] = info[2]
    return found


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` (it drains and stops what it started), then SIGKILL whatever of
    this head's processes is still there. Never `ray stop`: it kills every Ray on the machine."""
    procs = _head_processes(proc.pid, temp_dir) if proc.poll() is None else {}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p, t) for p, t in procs.items()):
        time.sleep(0.2)
    procs.update(_head_processes(-1, temp_dir))  # anything started meanwhile
    for pid, start in procs.items():
        if _alive(pid, start):  # same start time: not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _alive(pid: int, start: int) -> bool:
    info = _proc(pid)
    return info is not None and info[1] != "Z" and info[2] == start


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local head with 4 CPUs and 4 logical GPUs; yields (JobSubmissionClient, temp dir)."""
    from ray.job_submission import JobSubmissionClient

    # Unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must fit in 107 bytes.
    temp_dir = tmp_path_factory.mktemp("ray")
    own_temp = len(str(temp_dir)) > 40
    if own_temp:
        temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop now, no drain (up to 30 s by default)
    )
    dashboard_port = _free_port()
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        "--port", str(_free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-listen-port", str(_free_port()),
        "--ray-client-server-port", str(_free_port()),
        "--num-cpus", "4", "--num-gpus", "4",
        "--temp-dir", str(temp_dir),
        "--include-dashboard", "true", "--disable-usage-stats",
    ]  # fmt: skip
    log_path = tmp_path_factory.mktemp("ray-start") / "ray-start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{dashboard_port}", time.monotonic() + 60
        while True:
            try:
                client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
                break
            except Exception as e:  # ConnectionError until the dashboard answers
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not come up ({e}):\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        yield client, temp_dir
    finally:
        _stop_head(proc, str(temp_dir))
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _run_job(client, spec, tmp_path: Path, timeout: float) -> tuple[str, str]:
    """Submit `python -m pipeline run <campaign>` with the repo as working_dir; (status, logs)."""
    from ray.job_submission import JobStatus

    f = tmp_path / "campaign.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    entrypoint = f"python -m pipeline run {shlex.quote(str(f))}"  # `python` of the head's PATH: the venv's
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT)})
            break
        except RuntimeError as e:  # the dashboard answers before the head's job agent has registered
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job)
            break
        time.sleep(0.5)
    return str(status), client.get_job_logs(job)


@linux_only
def test_submitted_campaign_runs_into_absolute_store(ray_head, data_dir, tmp_path):
    client, temp_dir = ray_head
    store = tmp_path / "store"  # outside the job's working dir, which Ray unpacks in its session dir
    spec = make_spec(
        data_dir, str(store), seeds=[1], results_dir=str(tmp_path / "results"),
        train={"world_size": 1, "max_steps": 4},
        evals=[{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8, "shards": 1}],  # 1 eval task
    )  # fmt: skip
    status, logs = _run_job(client, spec, tmp_path, timeout=150)  # ~45-60 s on the 2-core box
    assert status == "SUCCEEDED", f"job {status}; its logs:\n{logs}"
    assert (store / Layout("t").result(1, "sw")).is_file()
    assert (tmp_path / "results" / "t" / "summary.json").is_file()

    # The working_dir upload honours .gitignore: the code went, the venv did not.
    files = temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    pkgs = [p for p in files.iterdir() if p.is_dir()]  # beside each: its .zip.lock
    assert pkgs
    for pkg in pkgs:
        assert (pkg / "pipeline" / "cli.py").is_file()
        assert not (pkg / ".venv").exists() and not (pkg / ".git").exists()


@linux_only
def test_relative_store_is_refused_under_a_job(ray_head, data_dir, tmp_path):
    client, _ = ray_head
    spec = make_spec(data_dir, "file://store/rel", seeds=[1], results_dir=str(tmp_path / "results"))
    status, logs = _run_job(client, spec, tmp_path, timeout=60)
    assert status == "FAILED", logs
    line = (
        f"error: {tmp_path / 'campaign.yaml'}: store: file://store/rel is relative; under a Ray job it "
        "would live in the job's temporary working dir and vanish: use an absolute path or s3://"
    )
    assert line in logs.splitlines(), logs


@pytest.mark.parametrize(
    "store, refused",
    [("store", True), ("./a/b", True), ("file://store", True), ("/abs/store", False), ("file:///abs", False),
     ("~/store", False), ("s3://bucket/prefix", False)],
)  # fmt: skip
def test_check_store_outlives_job(monkeypatch, store, refused):
    monkeypatch.delenv(RAY_JOB_ENV_VAR, raising=False)
    _check_store_outlives_job(store, "c.yaml")  # not a Ray job: a relative store is fine
    monkeypatch.setenv(RAY_JOB_ENV_VAR, '{"metadata": {"job_submission_id": "raysubmit_x"}}')
    if refused:
        with pytest.raises(ValueError, match=rf"^c\.yaml: store: {store} is relative; under a Ray job"):
            _check_store_outlives_job(store, "c.yaml")
    else:
        _check_store_outlives_job(store, "c.yaml")
