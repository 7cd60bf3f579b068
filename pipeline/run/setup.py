"""What a run settles before its loop: the Ray cluster it joins, paths every Ray worker resolves the
same way, the campaign's lease (one driver at a time), the code's commit for the manifests'
provenance, and how a user stops it (the Ray job it runs as, or its process)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pipeline.run.lease import Lease
from pipeline.spec import CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, normalize_uri


def resolve_paths(spec: CampaignSpec, base: Path | None = None) -> CampaignSpec:
    """Make local paths absolute, so Ray workers (other cwd) see the same files; one spelling per
    store (`store`, `./store` and `file://store` are one place)."""
    base = base or Path.cwd()

    def absolute(p: str) -> str:
        return str((base / p).resolve()) if "://" not in p else p

    data = spec.data.model_copy(update={"shards": absolute(spec.data.shards), "tokenizer": absolute(spec.data.tokenizer)})
    arts = {s: absolute(p) for s, p in spec.artifacts.items()} if spec.artifacts is not None else None
    train = spec.train.model_copy(update={"script": absolute(spec.train.script)}) if isinstance(spec.train, ScriptTrain) else spec.train
    return spec.model_copy(update={"data": data, "store": normalize_uri(spec.store, base), "artifacts": arts, "train": train})


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def campaign_lease(store: Store, spec: CampaignSpec, run_id: str | None = None) -> Lease:
    return Lease(store, Layout(spec.name).lease_dir, f"campaign {spec.name!r} in {store.uri}", "driver", token=run_id)


def connect_ray(spec: CampaignSpec, address: str | None, worker_logs: bool) -> None:
    """Join the cluster at `address` (or the spec's, or RAY_ADDRESS), else start a local Ray
    instance of the spec's `cluster.local` size."""
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): join what is there
        return
    address = address or spec.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=worker_logs)
    else:
        local = spec.cluster.local
        ray.init(
            address="local",  # a new instance: joining another cluster is asked for explicitly
            num_cpus=local.num_cpus,
            num_gpus=local.num_gpus,
            include_dashboard=False,
            log_to_driver=worker_logs,
            logging_level="WARNING",
        )


# Ray's job supervisor sets this in the environment of a job's entrypoint, and only there (Ray 2.60,
# ray/dashboard/modules/job/job_supervisor.py: JSON of the job's runtime_env and metadata, whose
# job_submission_id names the job). There is no RAY_JOB_SUBMISSION_ID.
RAY_JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def stop_command() -> str:
    """How a user stops this driver (and with it its running units): the Ray job it runs as, or
    its process."""
    try:
        job = json.loads(os.environ.get(RAY_JOB_ENV_VAR, "{}")).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        job = None
    return f"`ray job stop {job}`" if job else f"`kill -INT {os.getpid()}` (Ctrl-C)"
