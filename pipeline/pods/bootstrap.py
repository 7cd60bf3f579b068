"""Put a pod into the Ray cluster over SSH: install this project, check the GPUs, `ray start`.

The node joins with its pod's identity as Ray node labels (pod id, GPU type, GPU count, $/hour),
so the driver and the ledger can tell which pod ran what and what it cost. `ray start --block` runs
in its own session under nohup, its pid in `<dir>/ray-node.pid`, so leaving the cluster stops
exactly that node's processes (never `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.pods.pod import Pod
from pipeline.pods.ssh import SSH, why_line
from pipeline.records.nodes import LABEL_GPU_COUNT, LABEL_GPU_TYPE, LABEL_POD_ID, LABEL_USD_PER_HOUR

ROOT = Path(__file__).resolve().parents[2]
INSTALL_VERSION = 1
# `ray start` is tried again once when it exits on its own; a node that joined must still run
# SETTLE_S seconds later to count as joined.
START_TRIES, SETTLE_S = 2, 3
# What a pod needs to run the workers and the driver (the venv and data never travel).
_BUNDLE = ("pipeline", "workers", "jobs", "pyproject.toml", "Makefile", "README.md", "docs", "cluster.yaml")


class BootstrapError(RuntimeError):
    """A pod could not join; `str(err)` is one line."""


def torch_requirement(root: Path = ROOT) -> str:
    """The torch the project pins (the Makefile's `TORCH ?= ...`, one source for `make` and pods)."""
    m = re.search(r"^TORCH \?= *(\S+)", (root / "Makefile").read_text(), re.M)
    if not m:
        raise BootstrapError(f"{root / 'Makefile'}: no `TORCH ?= torch==...` line (the torch pin pods install)")
    return m.group(1)


def pod_labels(pod: Pod) -> dict[str, str]:
    """Ray node labels for a pod. Label values allow [A-Za-z0-9_.-] (Kubernetes syntax), so the GPU
    name's spaces become '-'."""

    def value(v: str) -> str:
        v = re.sub(r"[^A-Za-z0-9_.-]+", "-", v).strip("-_.")
        return v[:63].rstrip("-_.")

    return {
        LABEL_POD_ID: value(pod.id),
        LABEL_GPU_TYPE: value(pod.gpu_type) or "none",
        LABEL_GPU_COUNT: str(pod.gpu_count),
        LABEL_USD_PER_HOUR: f"{pod.cost_per_hr:.4f}",
    }


@dataclass(frozen=True)
class Bundle:
    data: bytes  # a .tar.gz of the project's files
    digest: str  # of the files' names and bytes: equal digests, same installed code


def project_bundle(root: Path = ROOT) -> Bundle:
    files: list[Path] = []
    for name in _BUNDLE:
        p = root / name
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")
        elif p.is_file():
            files.append(p)
    h, buf = hashlib.sha256(), io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in files:
            rel = f.relative_to(root).as_posix()
            data = f.read_bytes()
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return Bundle(buf.getvalue(), h.hexdigest())


@dataclass(frozen=True)
class BootstrapResult:
    pod_id: str
    labels: dict[str, str]
    num_gpus: int
    installed: bool  # False: the same code was already installed
    gpu_names: tuple[str, ...]


def bootstrap(
    ssh: SSH,
    pod: Pod,
    head: str,
    remote_dir: str = "/workspace/pipeline",
    *,
    cpu_pod: bool = False,
    ray_token: str | None = None,
    node_ip: str | None = None,
    python: str = "python3",
    ray_args: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
    join_timeout_s: float = 120.0,
) -> BootstrapResult:
    d = remote_dir.rstrip("/")
    q = shlex.quote
    installed = _install(ssh, d, python, log)
    gpu_names = _check_gpus(ssh, pod, cpu_pod, log)
    num_gpus = pod.gpu_count if cpu_pod else len(gpu_names)
    labels = pod_labels(pod)

    env = f"PYTHONPATH={q(d)} "  # the synced code, whether pip installed it or the image had its requirements
    if ray_token:  # by SFTP into a 0600 file: never on a command line (ps) or in a log
        ssh.write(f"{d}/.ray-auth-token", ray_token, mode=0o600)
        env += f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={q(d + '/.ray-auth-token')} "
    leave_ray(ssh, d)  # a re-bootstrap replaces the node this pod ran before
    # head "self": this pod becomes the head (port 6379, dashboard for `ray job submit`).
    where = ["--head", "--port=6379", "--dashboard-host=0.0.0.0"] if head == "self" else [f"--address={head}"]
    args = [f"{d}/.venv/bin/ray", "start", "--block", *where, f"--num-gpus={num_gpus}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()), "--disable-usage-stats"]  # fmt: skip
    if node_ip:
        args.append(f"--node-ip-address={node_ip}")
    args += ray_args
    start = " ".join(q(a) for a in args)
    log(f"{pod.id}: joining the Ray cluster at {head} with {num_gpus} GPU(s), labels {labels}")
    for attempt in range(1, START_TRIES + 1):
        code, tail = _start_ray(ssh, d, env, start, join_timeout_s)
        if code != 3 or attempt == START_TRIES:
            break
        # `ray start` exited on its own: on a slow host a head's Ray Client server gives up waiting
        # for the raylet (Ray's fixed 30 s) just as it registers, and takes the node down with it
        log(f"{pod.id}: ray start exited ({why_line(tail) or 'no log line'}); starting it again")
        leave_ray(ssh, d)
    if code:
        why = "ray start exited" if code == 3 else f"not joined after {join_timeout_s:g}s"
        last = why_line(tail)
        raise BootstrapError(f"{pod.id}: {why}" + (f": {last}" if last else "") + f" (log: {d}/ray-node.log on the pod)")
    log(f"{pod.id}: joined")
    return BootstrapResult(pod.id, labels, num_gpus, installed, tuple(gpu_names))


def _start_ray(ssh: SSH, d: str, env: str, start: str, join_timeout_s: float) -> tuple[int, str]:
    """Run `ray start --block` in its own session and wait until it joined and still runs a few
    seconds later (0), exited (3, with its log's tail) or did not join in time (4)."""
    q = shlex.quote
    # The pid file must name `ray start` itself (leave_ray kills its session): `$!` of a backgrounded
    # `cd && ...` list is the subshell's pid, so the process writes its own pid and then execs.
    pidf = q(f"{d}/ray-node.pid")
    inner = f"echo $$ > {pidf} && exec nohup {start}"
    ssh.check(
        f"cd {q(d)} && rm -f {pidf} && {{ {env}setsid sh -c {q(inner)} > ray-node.log 2>&1 < /dev/null & }} && "
        f"for i in $(seq 100); do test -s {pidf} && exit 0; sleep 0.1; done; echo 'no pid file after 10 s'; exit 5",
        what="ray start",
        timeout_s=30,
    )
    # `ray start --block` prints this once the raylet has registered with the head; it checks its
    # processes once a second after that, so one that died with the join is seen within SETTLE_S.
    alive = f"kill -0 $(cat {q(d)}/ray-node.pid) 2>/dev/null"
    wait = (
        f"for i in $(seq {int(join_timeout_s * 2)}); do "
        f"grep -q 'Ray runtime started' {q(d)}/ray-node.log && {{ sleep {SETTLE_S}; {alive} && exit 0; break; }}; "
        f"{alive} || break; sleep 0.5; done; "
        f"{alive} && exit 4; tail -n 3 {q(d)}/ray-node.log; exit 3"
    )
    return ssh.run(wait, timeout_s=join_timeout_s + SETTLE_S + 30)


def leave_ray(ssh: SSH, remote_dir: str, grace_s: int = 20) -> bool:
    """Stop the Ray node bootstrap started on this pod (its whole session); False if none ran."""
    pidf = shlex.quote(f"{remote_dir.rstrip('/')}/ray-node.pid")
    code, _ = ssh.run(
        f"test -s {pidf} || exit 9; p=$(cat {pidf}); kill -0 $p 2>/dev/null || {{ rm -f {pidf}; exit 9; }}; "
        f"kill -TERM $p; for i in $(seq {grace_s * 2}); do kill -0 $p 2>/dev/null || break; sleep 0.5; done; "
        f"pkill -KILL -s $p 2>/dev/null; rm -f {pidf}; exit 0",
        timeout_s=grace_s + 15,
    )
    return code == 0


def _install(ssh: SSH, d: str, python: str, log: Callable[[str], None]) -> bool:
    q = shlex.quote
    bundle = project_bundle()
    marker = f"{d}/.pipeline-install.json"
    code, out = ssh.run(f"cat {q(marker)} 2>/dev/null && {q(d)}/.venv/bin/python -c 'import pipeline, ray' >/dev/null 2>&1")
    try:
        have = json.loads(out.strip().splitlines()[0]).get("digest") if code == 0 and out.strip() else None
    except (ValueError, IndexError, AttributeError):
        have = None
    if have == bundle.digest:
        log(f"{d}: this project ({bundle.digest[:12]}) is already installed")
        return False
    log(f"{d}: installing this project ({bundle.digest[:12]}, {len(bundle.data) / 1e6:.1f} MB)")
    ssh.check(f"mkdir -p {q(d)}", what="mkdir")
    ssh.write(f"{d}/.pipeline-src.tar.gz", bundle.data, mode=0o644)
    # --system-site-packages: RunPod's pytorch images ship torch + CUDA in the system Python; pip
    # then keeps that build instead of downloading another.
    # A pod without a torch in its image gets the project's pin (the Makefile's TORCH), not whatever
    # `torch>=2.5` resolves to that day.
    # An image that has every requirement already (pipeline/pods/image.py: the pod farm's pods, or an
    # image built with them) skips pip: the code runs from this directory (PYTHONPATH at ray start).
    torch = torch_requirement()
    ssh.check(
        f"cd {q(d)} && tar -xzf .pipeline-src.tar.gz && rm .pipeline-src.tar.gz && "
        f"{{ test -x .venv/bin/python || {q(python)} -m venv --system-site-packages .venv; }} && "
        "{ .venv/bin/python -m pipeline.pods.image || { "
        f"{{ .venv/bin/python -c 'import torch' >/dev/null 2>&1 || {{ echo {q(f'no torch in the image: installing {torch}')} && "
        f".venv/bin/python -m pip install -q {q(torch)}; }}; }} && "
        ".venv/bin/python -m pip install -q -e .; }; }",
        out=log,
        timeout_s=1800,
        what="install (pip install -e .)",
    )
    ssh.write(marker, json.dumps({"version": INSTALL_VERSION, "digest": bundle.digest}) + "\n", mode=0o644)
    return True


def _check_gpus(ssh: SSH, pod: Pod, cpu_pod: bool, log: Callable[[str], None]) -> list[str]:
    code, out = ssh.run("nvidia-smi --query-gpu=name --format=csv,noheader", timeout_s=60)
    if cpu_pod:
        log(f"{pod.id}: CPU pod (--cpu-pod): {pod.gpu_count} logical GPU slot(s), nvidia-smi not checked")
        return []
    if code == 127:
        raise BootstrapError(f"{pod.id}: nvidia-smi not found: no NVIDIA driver on the pod (for a CPU pod with logical GPUs pass --cpu-pod)")
    if code:
        last = why_line(out)
        raise BootstrapError(f"{pod.id}: nvidia-smi failed (exit {code}): {last}")
    names = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if len(names) != pod.gpu_count:
        raise BootstrapError(f"{pod.id}: nvidia-smi shows {len(names)} GPU(s), RunPod rented {pod.gpu_count}")
    log(f"{pod.id}: {len(names)} × {names[0] if names else '?'}")
    return names
