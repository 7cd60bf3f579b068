"""Real parts for the pods tests: OpenSSH sshd on 127.0.0.1 with throwaway host and client keys
(installed by `make test`'s ssh-server step), and a local RunPod GraphQL server (pipeline/pods/fake_api.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.pods.fake_api import FakeRunPod

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Sshd:
    port: int
    host_pub: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    other_key: Path  # a key sshd does not accept
    dir: Path

    def known_hosts(self, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_pub}\n")
        return path


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not Path(SSHD).is_file() or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH sshd is not installed and `make test` could not install it (needs root + apt-get)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client", "other"):
        _keygen(d / name)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start:\n{(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    host_pub = " ".join((d / "host.pub").read_text().split()[:2])
    try:
        yield Sshd(port, host_pub, d / "client", d / "other", d)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def runpod(monkeypatch):
    """The local RunPod API, with RUNPOD_API_KEY / RUNPOD_API_URL pointing the client at it."""
    server = FakeRunPod()
    server.start()
    monkeypatch.setenv("RUNPOD_API_KEY", server.key)
    monkeypatch.setenv("RUNPOD_API_URL", server.url)
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class FarmWorld:
    farm: object  # pipeline.pods.farm.Farm
    api: FakeRunPod
    s3: str  # moto's endpoint on the bridge, reachable from every pod


@pytest.fixture(scope="module")
def farm_world(tmp_path_factory):
    """The pod farm (pipeline/pods/farm.py) behind the local RunPod API, and moto S3, both on the
    farm's bridge address; RUNPOD_API_* and AWS_* point this process (and every pod) at them."""
    import os

    from moto.server import ThreadedMotoServer

    from pipeline.pods.farm import Farm

    why = Farm.missing()
    if why:
        pytest.skip(why)
    farm = Farm.free(tmp_path_factory.mktemp("farm")).up()
    api = FakeRunPod(host=farm.host_ip, machines=farm)
    api.start()
    s3 = ThreadedMotoServer(ip_address=farm.host_ip, port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    env = {"RUNPOD_API_KEY": api.key, "RUNPOD_API_URL": api.url, "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    farm.env.update(env)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield FarmWorld(farm, api, env["AWS_ENDPOINT_URL"])
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        farm.down()
        api.stop()
        s3.stop()
