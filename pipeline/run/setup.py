"""What a run settles before its loop: paths every Ray worker resolves the same way, the campaign's
lease (one driver at a time), and the code's commit for the manifests' provenance."""

from __future__ import annotations

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
