"""A pod farm on this machine: each pod the local RunPod API (pipeline/pods/fake_api.py) rents is a
Linux network namespace on a bridge, with its own address (10.77.0.N), hostname and sshd on port 22,
so bootstrap, `ray up cluster.yaml`, a campaign and a pod's death run as they do on RunPod, with no
internet and no account (`make pod-farm`, tests/pipeline/pods/test_farm.py).

A pod's processes live in their own PID namespace (`unshare --pid --fork --mount-proc`): `ray stop`
or `pkill` inside a pod sees and kills only that pod's processes, never the host's Ray or another
pod's. Its own mount namespace gives it its own /root (home: ~/ray_bootstrap_config.yaml, caches),
/workspace (where the code is synced), /tmp/ray (Ray's default temp dir) and /dev/shm (the object
store); everything else is this machine's filesystem, so the pod's "image" has the project's
installed venv (/workspace/pipeline/.venv links to it) and bootstrap skips pip (pipeline/pods/image.py).
A pod's death is its namespace's init killed (the kernel then kills every process in it) and its
network namespace deleted: its address stops answering, as a vanished RunPod machine's does.
Needs root and `ip netns`; `Farm.missing()` says what is not there.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "pfarm0"
SUBNET = "10.77.0"  # /24: the host is .1, pods .2 and up
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
WORKSPACE = Path("/workspace")  # RunPod's volume path; each pod mounts its own over it
# pid 1 of a pod: runs sshd and reaps every orphan (a `ray start` that daemonized), so a dead
# process never lingers as a zombie that `kill -0` still finds.
_INIT = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "while True:\n"
    "    pid, status = os.wait()\n"
    "    if pid == child.pid: sys.exit(os.waitstatus_to_exitcode(status))\n"
)


class FarmError(RuntimeError):
    """The farm could not start or end a pod; `str(err)` is one line."""


@dataclass
class FarmPod:
    id: str
    ip: str
    ns: str  # network namespace name
    dir: Path  # its home, workspace, Ray temp dir and sshd files
    proc: subprocess.Popen  # `unshare` on the host; its child is the pod's pid 1


def _sh(*args: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise FarmError(f"{' '.join(args)}: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['exit %d' % r.returncode]}")


class Farm:
    """Pods as namespaces; `start_pod`/`end_pod` are what FakeRunPod(machines=farm) calls."""

    def __init__(self, root: Path, bridge: str = BRIDGE, subnet: str = SUBNET, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.bridge, self.subnet = bridge, subnet
        self.host_ip = f"{subnet}.1"
        self.env = dict(env or {})  # every pod's environment (the API's address and key, S3's endpoint)
        self.pods: dict[str, FarmPod] = {}
        self.key = self.root / "id_ed25519"  # the key pods accept (auth.ssh_private_key)
        self.known_hosts = self.root / "known_hosts"
        self._lock = threading.Lock()
        self._next = 2

    @classmethod
    def free(cls, root: Path, env: dict[str, str] | None = None) -> Farm:
        """A farm on the first bridge (pfarmN, 10.77.N.0/24) no other farm on this machine holds."""
        for n in range(64):
            if not Path(f"/sys/class/net/pfarm{n}").exists():
                return cls(root, bridge=f"pfarm{n}", subnet=f"10.77.{n}", env=env)
        raise FarmError("64 pod farms run on this machine: end one (`ip link del pfarmN`)")

    @staticmethod
    def missing() -> str | None:
        """Why a farm cannot run here, or None."""
        if sys.platform != "linux":
            return "the pod farm needs Linux network namespaces"
        if os.geteuid() != 0:
            return "the pod farm needs root (ip netns, bridges, mounts)"
        for tool in ("ip", "unshare", "ssh-keygen"):
            if not shutil.which(tool):
                return f"the pod farm needs `{tool}`"
        if not Path(SSHD).is_file():
            return f"the pod farm needs OpenSSH's sshd ({SSHD})"
        probe = f"pfarm-probe{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if r.returncode:
            return f"`ip netns add` fails here: {r.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    # -- the farm ------------------------------------------------------------------------------

    def up(self) -> Farm:
        why = self.missing()
        if why:
            raise FarmError(why)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            raise FarmError(f"bridge {self.bridge} exists: another farm runs (or one was not ended: `ip link del {self.bridge}`)")
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        (self.root / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        self.known_hosts.write_text("")
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        WORKSPACE.mkdir(exist_ok=True)  # a mount point only: each pod mounts its own workspace on it
        Path("/tmp/ray").mkdir(exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        return self

    def down(self) -> None:
        for pod_id in list(self.pods):
            self.end_pod(pod_id)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def __enter__(self) -> Farm:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- pods ----------------------------------------------------------------------------------

    def start_pod(self, pod_id: str, env: dict[str, str]) -> str:
        """A new pod (namespace, address, sshd): its address once sshd answers."""
        with self._lock:
            n, self._next = self._next, self._next + 1
        if n > 254:
            raise FarmError(f"the farm's subnet {self.subnet}.0/24 is full")
        # names are the host's (one farm's pods beside another's): the bridge's in each
        ip, ns, veth = f"{self.subnet}.{n}", f"{self.bridge}-{pod_id}", f"{self.bridge[:9]}v{n}"
        d = self.root / "pods" / pod_id
        for sub in ("home/.ssh", "workspace/pipeline", "ray"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        venv = d / "workspace" / "pipeline" / ".venv"  # the "image": this machine's installed venv
        if not venv.exists():
            venv.symlink_to(Path(sys.prefix))
        for old in (d / "host", d / "host.pub"):  # a resumed pod is a new machine: a new host key
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
        pod_env = {**self.env, **env, "RUNPOD_POD_ID": pod_id, "HOME": "/root"}
        # sshd hands these to every session (PermitUserEnvironment), as RunPod exports a pod's env.
        (d / "home" / ".ssh" / "environment").write_text("".join(f"{k}={v}\n" for k, v in sorted(pod_env.items())))
        (d / "sshd_config").write_text(
            f"ListenAddress 0.0.0.0\nPort 22\nHostKey {d / 'host'}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nPermitUserEnvironment yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", veth, "master", self.bridge, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "route", "add", "default", "via", self.host_ip)  # Ray finds its address by the default route
        q = shlex.quote
        # The image's Python may live in the host's home (pyenv): the pod's own home shows it there.
        keep = ""
        for path in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}:
            if path.is_relative_to("/root"):
                (d / "home" / path.relative_to("/root")).mkdir(parents=True, exist_ok=True)
                keep += f"mount --bind {q(str(path))} {q(str(d / 'home' / path.relative_to('/root')))} && "
        mounts = (
            f"hostname {q(pod_id)} && {keep}mount --rbind {q(str(d / 'home'))} /root && "
            f"mount --bind {q(str(d / 'workspace'))} {WORKSPACE} && mount --bind {q(str(d / 'ray'))} /tmp/ray && "
            "mount -t tmpfs -o size=2g tmpfs /dev/shm && "
            f"exec {q(sys.executable)} -c {q(_INIT)} {q(SSHD)} -D -e -f {q(str(d / 'sshd_config'))}"
        )
        log = open(d / "pod.log", "w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child", "sh", "-c", mounts],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        pod = FarmPod(pod_id, ip, ns, d, proc)
        with self._lock:
            self.pods[pod_id] = pod
        self._wait_ssh(pod)
        host_pub = " ".join((d / "host.pub").read_text().split()[:2])
        with self._lock, open(self.known_hosts, "a") as f:
            f.write(f"{ip} {host_pub}\n")
        return ip

    def _wait_ssh(self, pod: FarmPod, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((pod.ip, 22), timeout=1).close()
                return
            except OSError:
                pass
            if pod.proc.poll() is not None or time.monotonic() > deadline:
                raise FarmError(f"pod {pod.id}: sshd did not start: {(pod.dir / 'pod.log').read_text().strip()[-300:]}")
            time.sleep(0.1)

    def end_pod(self, pod_id: str) -> None:
        """The pod dies: every process in it killed, its network namespace (and address) gone."""
        with self._lock:
            pod = self.pods.pop(pod_id, None)
        if pod is None:
            return
        if pod.proc.poll() is None:
            os.killpg(pod.proc.pid, signal.SIGKILL)  # unshare dies; --kill-child kills the pod's pid 1, the kernel the rest
        pod.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.processes(pod.ns) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", pod.ns], capture_output=True)

    @staticmethod
    def processes(ns: str) -> list[int]:
        """The host pids of the processes in a pod's network namespace."""
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []
