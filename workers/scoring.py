"""Scoring passes: how one batch of windows turns into per-target nll (design §5).

Every scorer gets the batch's final hidden states H [B, L, d], computed once without grad, and
works only on the positions it needs: the scored ones (and, for SLOT's all-positions loss, the
valid ones). Full-window logits would give the same numbers at up to seq_len/stride times the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.spec import SlidingPass, SlotPass, SlotPerSamplePass
from workers.model import GPT
from workers.windows import BatchIndex


def cosine_lr(t: int, steps: int, lr: float, lr_min: float) -> float:
    """lr_t = lr_min + ½ (lr − lr_min)(1 + cos(π t / steps)), t = 0 … steps − 1."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t / steps))


def _fit(opt: torch.optim.Optimizer, p: SlotPass | SlotPerSamplePass, dev: torch.device, loss_fn) -> None:
    """`p.steps` optimizer steps on the cosine lr, autocast off (δ is small; keep it in fp32)."""
    with torch.enable_grad(), torch.autocast(dev.type, enabled=False):
        for t in range(p.steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(t, p.steps, p.lr, p.lr_min)
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _param_dtype(h: torch.Tensor) -> torch.dtype:
    # δ lives in fp32 (fp64 when the whole model runs in fp64, as the exactness tests do)
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def score_sliding(model: GPT, h: torch.Tensor, bi: BatchIndex, p: SlidingPass, dev: torch.device) -> torch.Tensor:
    rows, cols, tgt = _idx(bi.rows, dev), _idx(bi.cols, dev), _idx(bi.targets, dev)
    return _ce(model.compute_logits(h[rows, cols]), tgt, reduction="none")


def score_slot(model: GPT, h: torch.Tensor, bi: BatchIndex, p: SlotPass, dev: torch.device) -> torch.Tensor:
    """Shared δ [1, d]. The head is linear, so logits(H + δ) = softcap(H·Wᵀ + δ·Wᵀ): H·Wᵀ is
    computed once per batch and each of the `steps` steps costs one [d] × [d, V] product instead of
    a [K, d] × [d, V] one."""
    rows, cols, tgt = _idx(bi.rows, dev), _idx(bi.cols, dev), _idx(bi.targets, dev)
    dtype = _param_dtype(h)
    W = model.tok_emb.weight.to(dtype)
    base_score = model.head(h[rows, cols]).to(dtype)
    if p.loss_positions == "all":
        base_fit = model.head(h[_idx(bi.all_rows, dev), _idx(bi.all_cols, dev)]).to(dtype)
        t_fit = _idx(bi.all_targets, dev)
    else:
        base_fit, t_fit = base_score, tgt
    delta = torch.zeros(1, h.size(-1), device=dev, dtype=dtype, requires_grad=True)
    opt = torch.optim.AdamW([delta], lr=p.lr, weight_decay=p.weight_decay, eps=p.eps)
    _fit(opt, p, dev, lambda: _ce(model.softcap(base_fit + delta @ W.T), t_fit))
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        return _ce(model.softcap(base_score + delta @ W.T), tgt, reduction="none")


def score_slot_per_sample(
    model: GPT, h: torch.Tensor, bi: BatchIndex, p: SlotPerSamplePass, dev: torch.device
) -> torch.Tensor:
    """δ [B, d] and logit bias [B, V] per window; same linear-head shortcut as shared SLOT."""
    rows, cols, tgt = _idx(bi.rows, dev), _idx(bi.cols, dev), _idx(bi.targets, dev)
    dtype = _param_dtype(h)
    W = model.tok_emb.weight.to(dtype)
    base = model.head(h[rows, cols]).to(dtype)
    B, V = h.size(0), model.cfg.vocab_size
    delta = torch.zeros(B, h.size(-1), device=dev, dtype=dtype, requires_grad=True)
    bias = torch.zeros(B, V, device=dev, dtype=dtype, requires_grad=True)
    opt = torch.optim.AdamW([delta, bias], lr=p.lr)

    def logits() -> torch.Tensor:
        return model.softcap(base + (delta @ W.T + bias)[rows])

    _fit(opt, p, dev, lambda: _ce(logits(), tgt))
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        return _ce(logits(), tgt, reduction="none")


SCORERS = {"sliding": score_sliding, "slot": score_slot, "slot_per_sample": score_slot_per_sample}


def _idx(a, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev)


def _ce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in at least fp32 (bf16 logits under autocast are upcast first)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    return F.cross_entropy(logits, target, reduction=reduction)
