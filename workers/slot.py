"""SLOT scorers (docs/design.md §5): per batch, a δ added to the final hidden states is fitted by AdamW, then
the batch is scored once with it and δ is discarded.

- shared (`slot`): δ [1, d] for the whole batch; the loss positions are the scored ones, every
  position of the windows (`all`), every position of the batch padded to [B, seq_len] with the
  padding's targets (`padded`, PR #1176), or only positions whose targets earlier batches scored
  (`context`: no token is adapted on before it is scored).
- per-sample (`slot_per_sample`): δ [B, d] and a logit bias [B, V] (before the softcap) per window;
  loss = Σ nll over the fit positions / their number in the batch (PR #1722), on the scored
  positions or each window's context.

When the model's head is linear (head, head_weight, softcap: our GPT), logits(H + δ) =
softcap(H·Wᵀ + δ·Wᵀ): H·Wᵀ is computed once per batch and each step costs a [d] × [d, V] product.
`logits_dtype: bf16` rounds H + δ to bf16 before the head (PR #1176), which that shortcut cannot
express, so it goes through compute_logits, like an adapter without a linear head.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from pipeline.spec import SlotPass, SlotPerSamplePass
from workers.scoring import ce, idx, step_lr
from workers.windows import BatchIndex


def _param_dtype(h: torch.Tensor) -> torch.dtype:
    # δ lives in fp32 (fp64 when the whole model runs in fp64, as the exactness tests do)
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _linear_head(model: nn.Module, p: SlotPass | SlotPerSamplePass) -> bool:
    return getattr(p, "logits_dtype", "fp32") == "fp32" and all(hasattr(model, a) for a in ("head", "head_weight", "softcap"))


def _round_bf16(z: torch.Tensor) -> torch.Tensor:
    return z.to(torch.bfloat16).to(z.dtype)


def _fit(params: list[torch.Tensor], p: SlotPass | SlotPerSamplePass, dev: torch.device, loss_fn: Callable[[], torch.Tensor]) -> None:
    """`p.steps` AdamW steps on the pass's lr schedule, autocast off (δ is small; keep it in fp32)."""
    opt = torch.optim.AdamW(params, lr=p.lr, betas=tuple(p.betas), eps=p.eps, weight_decay=p.weight_decay)
    with torch.enable_grad(), torch.autocast(dev.type, enabled=False):
        for t in range(p.steps):
            for g in opt.param_groups:
                g["lr"] = step_lr(t, p)
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def fit_positions(bi: BatchIndex, loss_positions: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rows, cols, targets) shared SLOT fits on; None = the scored positions."""
    if loss_positions == "scored":
        return None
    if loss_positions == "all":
        return bi.all_rows, bi.all_cols, bi.all_targets
    if loss_positions == "context":
        m = bi.all_target_at < bi.target_at.min()
        return bi.all_rows[m], bi.all_cols[m], bi.all_targets[m]
    if loss_positions == "padded":
        B, L = bi.x.shape
        y = np.zeros((B, L), dtype=np.int64)  # padding positions keep target 0, as the record's batch does
        y[bi.all_rows, bi.all_cols] = bi.all_targets
        return np.repeat(np.arange(B), L), np.tile(np.arange(L), B), y.reshape(-1)
    raise ValueError(f"unknown loss_positions {loss_positions!r}")


def context_positions(bi: BatchIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window, the positions before its first scored one (targets an earlier window scored)."""
    first = np.full(bi.x.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, bi.rows, bi.cols)
    m = bi.all_cols < first[bi.all_rows]
    return bi.all_rows[m], bi.all_cols[m], bi.all_targets[m]


def score_slot(model: nn.Module, h: torch.Tensor, bi: BatchIndex, p: SlotPass, dev: torch.device) -> torch.Tensor:
    rows, cols, tgt = idx(bi.rows, dev), idx(bi.cols, dev), idx(bi.targets, dev)
    fit = fit_positions(bi, p.loss_positions)
    fr, fc, ft = (rows, cols, tgt) if fit is None else (idx(a, dev) for a in fit)
    dtype = _param_dtype(h)
    delta = torch.zeros(1, h.size(-1), device=dev, dtype=dtype, requires_grad=True)
    if _linear_head(model, p):
        W = model.head_weight.to(dtype)
        base_score = model.head(h[rows, cols]).to(dtype)
        base_fit = base_score if fit is None else model.head(h[fr, fc]).to(dtype)

        def logits(base_or_h: torch.Tensor) -> torch.Tensor:
            return model.softcap(base_or_h + delta @ W.T)
    else:
        base_score = h[rows, cols].to(dtype)
        base_fit = base_score if fit is None else h[fr, fc].to(dtype)
        cast = _round_bf16 if p.logits_dtype == "bf16" else (lambda z: z)

        def logits(base_or_h: torch.Tensor) -> torch.Tensor:
            return model.compute_logits(cast(base_or_h + delta))

    if ft.numel():  # `context` has nothing to fit on in the first batch: δ stays 0
        _fit([delta], p, dev, lambda: ce(logits(base_fit), ft))
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        return ce(logits(base_score), tgt, reduction="none")


def score_slot_per_sample(
    model: nn.Module, h: torch.Tensor, bi: BatchIndex, p: SlotPerSamplePass, dev: torch.device
) -> torch.Tensor:
    rows, cols, tgt = idx(bi.rows, dev), idx(bi.cols, dev), idx(bi.targets, dev)
    fit = context_positions(bi) if p.loss_positions == "context" else None
    fr, fc, ft = (rows, cols, tgt) if fit is None else (idx(a, dev) for a in fit)
    dtype = _param_dtype(h)
    B = h.size(0)
    if _linear_head(model, p):
        W = model.head_weight.to(dtype)
        base_score = model.head(h[rows, cols]).to(dtype)
        base_fit = base_score if fit is None else model.head(h[fr, fc]).to(dtype)
        V = W.size(0)

        def logits(base: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return model.softcap(base + (delta @ W.T + bias)[r])
    else:
        if "bias" not in inspect.signature(model.compute_logits).parameters:
            raise ValueError("slot_per_sample: the model's compute_logits takes no bias and it has no linear head (docs/recipes.md: Model adapters)")
        base_score = h[rows, cols].to(dtype)
        base_fit = base_score if fit is None else h[fr, fc].to(dtype)
        with torch.no_grad():
            V = int(model.compute_logits(base_score[:1]).shape[-1])

        def logits(base: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return model.compute_logits(base + delta[r], bias[r])

    delta = torch.zeros(B, h.size(-1), device=dev, dtype=dtype, requires_grad=True)
    bias = torch.zeros(B, V, device=dev, dtype=dtype, requires_grad=True)
    if ft.numel():
        _fit([delta, bias], p, dev, lambda: ce(logits(base_fit, fr), ft))
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        return ce(logits(base_score, rows), tgt, reduction="none")
