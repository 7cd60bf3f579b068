"""Scoring passes: how one batch of windows turns into per-target nll (docs/design.md §5).

Every scorer gets the batch's final hidden states H [B, L, d], computed once without grad, and
works only on the positions it needs: the scored ones (and, for SLOT's other losses, the positions
it fits on). Full-window logits would give the same numbers at up to seq_len/stride times the cost.
The SLOT scorers are in workers/slot.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.spec import SlidingPass, SlotPass, SlotPerSamplePass
from workers.windows import BatchIndex


def cosine_lr(t: int, steps: int, lr: float, lr_min: float) -> float:
    """lr_t = lr_min + ½ (lr − lr_min)(1 + cos(π t / steps)), t = 0 … steps − 1."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t / steps))


def step_lr(t: int, p: SlotPass | SlotPerSamplePass) -> float:
    """A SLOT pass's lr at step t: constant, or cosine over t/steps or t/(steps − 1) (which ends at
    lr_min; with one step it is lr)."""
    if p.schedule == "constant":
        return p.lr
    if p.progress == "t/steps":
        return cosine_lr(t, p.steps, p.lr, p.lr_min)
    return p.lr if p.steps == 1 else cosine_lr(t, p.steps - 1, p.lr, p.lr_min)


def score_sliding(model: nn.Module, h: torch.Tensor, bi: BatchIndex, p: SlidingPass, dev: torch.device) -> torch.Tensor:
    rows, cols, tgt = idx(bi.rows, dev), idx(bi.cols, dev), idx(bi.targets, dev)
    return ce(model.compute_logits(h[rows, cols]), tgt, reduction="none")


def idx(a, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev)


def ce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in at least fp32 (bf16 logits under autocast are upcast first)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    return F.cross_entropy(logits, target, reduction=reduction)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position, in fp32, through the adapter contract
    (for our GPT the same ops, so the same bits, as GPT.forward)."""
    logits = model.compute_logits(model.forward_hidden(x))
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
