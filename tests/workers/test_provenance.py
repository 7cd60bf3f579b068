"""Every attempt records the stack it ran on (docs/reports.md "Reports"), and never a secret."""

from __future__ import annotations

import json

import torch

from pipeline.store import Layout, LocalStore
from workers.provenance import attempt_provenance, numeric_env, packages


def test_env_vars_that_change_numbers_are_recorded_and_secrets_never(monkeypatch, tmp_path):
    monkeypatch.setenv("NCCL_ALGO", "Ring")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("TORCH_HUB_TOKEN", "s3cr3t-hub")  # a numeric prefix, a secret's name
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-aws")
    monkeypatch.setenv("RUNPOD_API_KEY", "s3cr3t-runpod")
    env = numeric_env()
    assert env["NCCL_ALGO"] == "Ring" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not {"TORCH_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "RUNPOD_API_KEY"} & set(env)
    store, layout = LocalStore(tmp_path), Layout("c")
    prov = attempt_provenance(store, layout, "att1")
    assert prov["torch"] == torch.__version__ and prov["env"]["NCCL_ALGO"] == "Ring" and len(prov["code_sha256"]) == 64
    # the package list is stored once per stack, under its digest
    assert store.get(prov["packages_key"]).decode() == packages() and f"torch=={torch.__version__}" in packages()
    assert attempt_provenance(store, layout, "att2")["packages_key"] == prov["packages_key"]
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()) + json.dumps(prov).encode()
    assert b"s3cr3t" not in written
