"""What an attempt ran on: every training and eval attempt records it (docs/reports.md "Reports").

A maintainer who cannot reproduce a record needs the exact stack, not "torch 2.x": interpreter,
torch, CUDA, cuDNN, NCCL, flash-attn and Ray versions, GPU names and driver, the container where the
pod says it, the environment variables that change numbers (never one that looks like a secret),
a digest of this code and of the installed packages. The package list itself (a `pip freeze`) and
`nvidia-smi -q` go to the store beside it (`env/`), the list once per distinct digest.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pipeline.store import Layout, Store

PROVENANCE_VERSION = 2  # 1: the training manifest's versions only (python ... gpus, host)

# Variables that change numbers or kernels: determinism switches, TF32, thread counts, allocator
# and NCCL algorithm choices. Matched by exact name or prefix.
NUMERIC_ENV = ("CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
NUMERIC_ENV_PREFIXES = ("NCCL_", "CUDNN_", "CUBLAS_", "TORCH_", "PYTORCH_", "TORCHINDUCTOR_", "FLASH_ATTENTION_", "CUDA_LAUNCH_", "NVIDIA_TF32")
# A name like these is never recorded, whatever its prefix (NCCL has no secrets, a user's
# TORCH_HUB_TOKEN does).
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASS|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
# RunPod does not tell a container its image; `pipeline pods up --env PIPELINE_IMAGE=...` can.
IMAGE_ENV = "PIPELINE_IMAGE"


def numeric_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {
        k: v for k, v in sorted(env.items())
        if (k in NUMERIC_ENV or k.startswith(NUMERIC_ENV_PREFIXES)) and not SECRET_NAME.search(k)
    }


@functools.lru_cache(maxsize=1)
def packages() -> str:
    """`name==version` of every installed distribution, sorted: what `pip freeze` lists."""
    seen: dict[str, str] = {}
    for d in metadata.distributions():
        name = d.metadata.get("Name")
        if name:
            seen.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={d.version}")
    return "".join(line + "\n" for _, line in sorted(seen.items()))


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """sha256 of this project's Python sources (pipeline/, workers/): which code ran, where a job's
    working dir has no .git to ask."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for pkg in ("pipeline", "workers"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _nvidia_smi(*args: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def gpu_driver() -> str | None:
    out = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return out.splitlines()[0].strip() if out and out.strip() else None


def command() -> str | None:
    """This process's command line; None in a Ray worker (its command is Ray's, not the user's)."""
    if not sys.argv or Path(sys.argv[0]).name in ("default_worker.py", "-c", ""):
        return None
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def provenance() -> dict[str, Any]:
    try:
        import flash_attn

        fa = flash_attn.__version__
    except ImportError:
        fa = None
    import numpy
    import ray

    cuda = torch.cuda.is_available()
    nccl = None
    if cuda and hasattr(torch.cuda, "nccl"):
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {
        "provenance_version": PROVENANCE_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": nccl,
        "flash_attn": fa,
        "numpy": numpy.__version__,
        "ray": ray.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "gpu_driver": gpu_driver() if cuda else None,
        "host": platform.node(),
        "container": {"image": os.environ.get(IMAGE_ENV), "runpod_pod_id": os.environ.get("RUNPOD_POD_ID"), "docker": Path("/.dockerenv").exists()},
        "env": numeric_env(),
        "code_sha256": code_sha256(),
        "packages_sha256": hashlib.sha256(packages().encode()).hexdigest(),
        "command": command(),
    }


def record_environment(store: Store, layout: Layout, attempt: str, prov: dict[str, Any]) -> dict[str, str]:
    """Writes the package list (once per digest: every attempt on one stack shares it) and, on a
    GPU, this attempt's `nvidia-smi -q`; returns their keys, for the attempt's provenance."""
    keys = {"packages_key": layout.env_file(f"packages-{prov['packages_sha256'][:16]}.txt")}
    if not store.exists(keys["packages_key"]):
        store.put_new(keys["packages_key"], packages().encode())
    if prov.get("gpus"):
        smi = _nvidia_smi("-q")
        if smi:
            keys["nvidia_smi_key"] = layout.env_file(f"nvidia-smi-{attempt}.txt")
            store.put_new(keys["nvidia_smi_key"], smi.encode())
    return keys


def attempt_provenance(store: Store, layout: Layout, attempt: str) -> dict[str, Any]:
    """provenance() plus the keys of what `record_environment` wrote."""
    prov = provenance()
    return {**prov, **record_environment(store, layout, attempt, prov)}
