"""From an artifact to the model an eval runs (docs/recipes.md: Model adapters).

The default adapter is this project's GPT, built from either artifact format it reads: its own
(`pipeline-int8-zlib`, which carries its config) or the parameter-golf baseline's
`int8_clean_per_row_v1` (architecture from the campaign's `model:`, or inferred from the tensor
shapes when `model:` is left at its defaults). `model: {adapter: "pkg.mod:load"}` names another
one: `load(artifact_path, spec) -> nn.Module` with

- `forward_hidden(ids [B, T]) -> H [B, T, d]` (causal: position t sees ids ≤ t),
- `compute_logits(H [..., d]) -> logits [..., V]`, softcap included.

Optional, for speed and per-sample SLOT: `head(H)` (linear, before the softcap), `head_weight`
([V, d]) and `softcap(z)`, with compute_logits(H) = softcap(head(H)); per-sample SLOT's logit bias
needs `compute_logits(H, bias)` (bias added before the softcap) or those three.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pipeline.spec import CampaignSpec, ModelConfig
from workers.artifact import is_ours, read_payload, unpack_ours
from workers.baseline_format import BASELINE_FORMAT, NOT_IN_SHAPES, dequantize_baseline, infer_config, is_baseline
from workers.model import GPT


@dataclass(frozen=True)
class EvalModel:
    model: nn.Module
    vocab_size: int
    artifact_format: str  # pipeline-int8-zlib | int8_clean_per_row_v1 | adapter
    architecture: str  # where the architecture came from, said in result.json


def load_eval_model(blob: bytes, source: str, digest: str, spec: CampaignSpec) -> EvalModel:
    """The eval model of an artifact, on CPU, in eval mode, with no parameter requiring grad."""
    if spec.adapter is not None:
        model = _run_adapter(spec.adapter, _local_copy(blob, digest), spec, source)
        return _ready(EvalModel(model, probe_vocab(model), "adapter", f"adapter {spec.adapter}"))
    payload = read_payload(blob, source)
    if is_ours(payload):
        cfg, state = unpack_ours(payload, source)
        fmt, arch = str(payload["format"]), "the artifact's config"
    elif is_baseline(payload):
        state = dequantize_baseline(payload, source)
        fmt = BASELINE_FORMAT
        if spec.model == ModelConfig():
            cfg = infer_config(state, source)
            arch = f"inferred from tensor shapes ({', '.join(NOT_IN_SHAPES)}: the baseline's)"
        else:
            cfg, arch = spec.model, "the campaign's model:"
    else:
        fmt = payload.get("format", payload.get("__quant_format__")) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{source}: unsupported artifact format {fmt!r}; a model adapter can load it (docs/recipes.md: Model adapters)")
    model = GPT(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"{source}: its tensors do not fit {arch}: {' '.join(lines[1:3])[:300]}") from None
    return _ready(EvalModel(model, cfg.vocab_size, fmt, arch))


def _ready(em: EvalModel) -> EvalModel:
    em.model.requires_grad_(False)  # scoring never needs weight grads; TTT turns on what it trains
    em.model.eval()
    return em


def _run_adapter(ref: str, path: Path, spec: CampaignSpec, source: str) -> nn.Module:
    mod_name, fn_name = ref.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"model.adapter: cannot load {ref!r} ({e})") from None
    model = fn(str(path), spec)
    missing = [m for m in ("forward_hidden", "compute_logits") if not callable(getattr(model, m, None))]
    if not isinstance(model, nn.Module) or missing:
        what = f"has no {', '.join(missing)}" if missing else f"returned a {type(model).__name__}, not an nn.Module"
        raise ValueError(f"model.adapter {ref!r} on {source}: {what} (docs/recipes.md: Model adapters)")
    return model


def probe_vocab(model: nn.Module) -> int:
    """V, from the logits of one token (an adapter need not say it)."""
    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():
        return int(model.compute_logits(model.forward_hidden(torch.zeros(1, 1, dtype=torch.long, device=dev))).shape[-1])


def _local_copy(blob: bytes, digest: str) -> Path:
    """The artifact as a local file for an adapter, once per content (the store may be S3)."""
    d = Path(tempfile.gettempdir()) / "pipeline-artifacts"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{digest}.ptz"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    return path
