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


# --- the parameter-golf baseline's int8_clean_per_row_v1 exporter, as its train_gpt.py writes it ---

BASELINE_KEEP_FLOAT_MAX_NUMEL = 65_536
BASELINE_CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")
BASELINE_CLIP_Q = 0.9999984


def _baseline_quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), BASELINE_CLIP_Q, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
        return q, scale.to(torch.float16).contiguous()
    clip = float(torch.quantile(t32.abs().flatten(), BASELINE_CLIP_Q).item())
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8).contiguous()
    return q, scale


def baseline_artifact(state: dict[str, torch.Tensor]) -> bytes:
    """zlib(torch.save(obj)) of the baseline's quantize_state_dict_int8."""
    import io
    import zlib

    quantized, scales, dtypes, passthrough, qmeta, orig = {}, {}, {}, {}, {}, {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= BASELINE_KEEP_FLOAT_MAX_NUMEL:
            if any(p in name for p in BASELINE_CONTROL_PATTERNS):
                passthrough[name] = t.float().contiguous()
            else:
                orig[name] = str(t.dtype).removeprefix("torch.")
                passthrough[name] = t.to(torch.float16).contiguous()
        else:
            q, s = _baseline_quantize(t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name], dtypes[name] = q, s, str(t.dtype).removeprefix("torch.")
    obj = {"__quant_format__": "int8_clean_per_row_v1", "quantized": quantized, "scales": scales, "dtypes": dtypes, "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig:
        obj["passthrough_orig_dtypes"] = orig
    buf = io.BytesIO()
    torch.save(obj, buf)
    return zlib.compress(buf.getvalue(), level=9)


def ours_raw_artifact(state: dict[str, torch.Tensor], cfg) -> bytes:
    """This project's format holding `state` as it is (fp32 'raw' entries, nothing re-quantized)."""
    import io
    import zlib

    from workers.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION

    tensors = {k: {"raw": v.detach().float().contiguous()} for k, v in state.items()}
    buf = io.BytesIO()
    torch.save({"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "config": cfg.model_dump(mode="json"), "tensors": tensors}, buf)
    return zlib.compress(buf.getvalue())


def engine_and_reference(spec, seed: int = 1, shards: int = 2):
    """The engine's result for spec.evals[0] in fp64 (over `shards` shards) and the reference's
    (Σ nll, tokens, bytes) on the same artifact, for agreement tests."""
    from pipeline.store import Layout, open_store
    from tests.workers.reference import reference_eval
    from workers.evaluate import execute, merge_result, prepare_context
    from workers.plan import ensure_plan

    store, cpu, recipe = open_store(spec.store), torch.device("cpu"), spec.evals[0]
    ctx = prepare_context(spec, seed, recipe, store, cpu)
    ctx.model.double()
    plan = ensure_plan(store, spec, seed, recipe, default_shards=shards)
    for k in range(len(plan["shards"])):
        execute(ctx, store, Layout(spec.name), seed, k, 0.0001, plan)
    res = merge_result(store, Layout(spec.name), seed, recipe)
    ref_ctx = prepare_context(spec, seed, recipe, store, cpu)
    ref_ctx.model.double()
    return res, reference_eval(ref_ctx), ctx
