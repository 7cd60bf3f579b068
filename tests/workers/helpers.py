"""Test helpers for the data plane: commit a (random) model to a store as if training had run."""

from __future__ import annotations

import torch

from pipeline.spec import CampaignSpec
from pipeline.store import Layout, open_store
from workers.artifact import export_artifact, sha256
from workers.model import GPT


def commit_random_model(spec: CampaignSpec, seed: int, scale: float = 0.05) -> GPT:
    torch.manual_seed(seed)
    model = GPT(spec.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    store, layout = open_store(spec.store), Layout(spec.name)
    blob = export_artifact(model.state_dict(), spec.model)
    store.put(layout.artifact(seed), blob)
    store.put_json(layout.manifest(seed), {"version": 1, "seed": seed, "sha256": sha256(blob), "bytes": len(blob)})
    return model
