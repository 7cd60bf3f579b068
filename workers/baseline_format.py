"""The parameter-golf baseline's artifact format, `int8_clean_per_row_v1` (its `final_model.int8.ptz`).

`zlib.compress(torch.save(obj))` with obj = {"__quant_format__": "int8_clean_per_row_v1",
"quantized": {name: int8}, "scales": {name: fp16 [rows] or a scalar}, "dtypes": {name: "float32" |
"bfloat16" | ...}, "passthrough": {name: tensor}, optional "qmeta": {name: {"scheme": "per_row"}},
optional "passthrough_orig_dtypes": {name: dtype name}}. 2-D weights are int8 with one scale per row,
other large floats int8 with one scalar scale, small ones passed through (floats stored fp16 and
restored to their original dtype). The key names are the baseline GPT's, which are ours.

Records that changed the architecture or the format need a model adapter (docs/recipes.md: Model adapters).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pipeline.spec import ModelConfig

BASELINE_FORMAT = "int8_clean_per_row_v1"
# Fields the tensors cannot tell; an inferred architecture takes the baseline's values for them.
NOT_IN_SHAPES = ("rope_base", "logit_softcap")


def is_baseline(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("__quant_format__") == BASELINE_FORMAT


def _dtype(name: Any, source: str, key: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"{source}: {key}: {name!r} is not a torch dtype")
    return dt


def dequantize_baseline(payload: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The float state dict, as the baseline's dequantize_state_dict_int8 rebuilds it."""
    try:
        quantized, scales, dtypes = payload["quantized"], payload["scales"], payload["dtypes"]
        passthrough = payload["passthrough"]
    except KeyError as e:
        raise ValueError(f"{source}: {BASELINE_FORMAT} artifact without {e.args[0]!r}") from None
    qmeta = payload.get("qmeta", {}) or {}
    orig = payload.get("passthrough_orig_dtypes", {}) or {}
    out: dict[str, torch.Tensor] = {}
    for name, q in quantized.items():
        dtype = _dtype(dtypes.get(name), source, f"dtypes.{name}")
        s = scales[name]
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            w = q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
        else:
            w = q.float() * float(s.item())
        out[name] = w.to(dtype).contiguous()
    for name, t in passthrough.items():
        t = t.detach().cpu().contiguous()
        if name in orig:
            t = t.to(_dtype(orig[name], source, f"passthrough_orig_dtypes.{name}")).contiguous()
        out[name] = t
    return out


def infer_config(state: dict[str, torch.Tensor], source: str) -> ModelConfig:
    """The baseline-family architecture the tensors imply (rope_base and logit_softcap, which no
    tensor holds, at the baseline's values)."""
    try:
        vocab, dim = state["tok_emb.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        heads = int(state["blocks.0.attn.q_gain"].numel())
        kv = state["blocks.0.attn.c_k.weight"].shape[0] // (dim // heads)
        mlp = state["blocks.0.mlp.fc.weight"].shape[0] // dim
    except (KeyError, ValueError, ZeroDivisionError) as e:
        raise ValueError(
            f"{source}: cannot infer the architecture from its tensors ({e}); give the campaign's model: or an adapter"
        ) from None
    try:
        return ModelConfig(vocab_size=vocab, num_layers=layers, model_dim=dim, num_heads=heads, num_kv_heads=kv, mlp_mult=mlp)
    except ValueError as e:
        raise ValueError(f"{source}: its tensors imply no valid architecture ({' '.join(str(e).split())[:200]})") from None
