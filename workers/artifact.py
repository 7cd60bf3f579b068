"""The exported model: per-row int8 + zlib (the parameter-golf baseline's format). Provenance: workers/provenance.py.

Large 2-D weights are stored as int8 with one fp16 scale per row (clipped at a high quantile so one
outlier does not flatten a row); other small weights are stored fp16, and the gains, scales and
mixes that steer the residual stream stay fp32. The whole dict is torch-saved and zlib-compressed.
Evals load the artifact back, so every reported number is the number of the artifact that would be
submitted.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zlib
from typing import Any

import torch

from pipeline.spec import ModelConfig

ARTIFACT_FORMAT = "pipeline-int8-zlib"
ARTIFACT_VERSION = 1
KEEP_FLOAT_MAX_NUMEL = 65_536
# Small tensors that steer the residual stream stay fp32; other small weights are stored fp16.
CONTROL_PATTERNS = ("scale", "gain", "mix", "skip_weights")
CLIP_QUANTILE = 0.9999984


def _quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t32 = t.float()
    clip = torch.quantile(t32.abs(), CLIP_QUANTILE, dim=1)
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.round(t32.clamp(-clip[:, None], clip[:, None]) / scale[:, None]).clamp(-127, 127)
    return q.to(torch.int8).contiguous(), scale.to(torch.float16).contiguous()


def quantize_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.ndim == 2 and t.numel() > KEEP_FLOAT_MAX_NUMEL:
            q, scale = _quantize_rows(t)
            out[name] = {"q": q, "scale": scale}
        elif t.is_floating_point():
            control = t.ndim < 2 or any(p in name for p in CONTROL_PATTERNS)
            out[name] = {"raw": t.float() if control else t.half()}
        else:
            out[name] = {"raw": t}
    return out


def dequantize_state(packed: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, entry in packed.items():
        if "q" in entry:
            out[name] = entry["q"].float() * entry["scale"].float()[:, None]
        else:
            out[name] = entry["raw"].float() if entry["raw"].is_floating_point() else entry["raw"]
    return out


def export_artifact(state: dict[str, torch.Tensor], cfg: ModelConfig) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "config": cfg.model_dump(mode="json"),
            "tensors": quantize_state(state),
        },
        buf,
    )
    return zlib.compress(buf.getvalue(), level=9)


def read_payload(blob: bytes, source: str = "<artifact>") -> Any:
    """The torch-saved object inside a zlib artifact (tensors only: weights_only=True)."""
    try:
        return torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu", weights_only=True)
    except (zlib.error, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{source}: not a readable artifact ({' '.join(str(e).split())[:200]})") from None


def is_ours(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == ARTIFACT_FORMAT


def unpack_ours(payload: dict[str, Any], source: str = "<artifact>") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    if payload.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"{source}: unsupported artifact {payload.get('format')} v{payload.get('version')}")
    return ModelConfig.model_validate(payload["config"]), dequantize_state(payload["tensors"])


def load_artifact(blob: bytes, source: str = "<artifact>") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    payload = read_payload(blob, source)
    if not is_ours(payload):
        fmt = payload.get("format", payload.get("__quant_format__")) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{source}: unsupported artifact {fmt}")
    return unpack_ours(payload, source)


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
