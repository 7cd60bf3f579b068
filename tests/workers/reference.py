"""Straightforward reference evals: a Python loop builds each window, the model computes logits for
every position of every window, and a mask picks the scored ones. Same semantics as the engine
(design §5), none of its shortcuts. Used by the tests for agreement and by bench/ for speed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.data import target_bytes
from workers.scoring import cosine_lr
from workers.segments import Record, merge
from workers.group import Group
from workers.ttt import ChunkTrainer, num_chunks
from workers.windows import chunk_of_windows


def _windows(ctx, lo: int, hi: int):
    val, w = ctx.val, ctx.windows
    L = int(w.lens[lo:hi].max())
    B = hi - lo
    x = torch.zeros(B, L, dtype=torch.long)
    y = torch.zeros(B, L, dtype=torch.long)
    scored = torch.zeros(B, L, dtype=torch.bool)
    valid = torch.zeros(B, L, dtype=torch.bool)
    nbytes = 0
    for r, i in enumerate(range(lo, hi)):
        s, n, slo = int(w.starts[i]), int(w.lens[i]), int(w.score_lo[i])
        x[r, :n] = torch.from_numpy(val[s : s + n])
        y[r, :n] = torch.from_numpy(val[s + 1 : s + n + 1])
        scored[r, slo:n] = True
        valid[r, :n] = True
        nbytes += int(target_bytes(val[s + slo : s + n], val[s + slo + 1 : s + n + 1], *ctx.tables).sum())
    return x, y, scored, valid, nbytes


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (losses * mask).sum() / mask.sum()


def reference_batch(ctx, batch: int) -> Record:
    lo, hi = int(ctx.bounds[batch]), int(ctx.bounds[batch + 1])
    x, y, scored, valid, nbytes = _windows(ctx, lo, hi)
    model, p = ctx.model, ctx.recipe.scorer
    with torch.no_grad():
        h = model.forward_hidden(x)
    V = model.cfg.vocab_size
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32

    def losses(logits):  # [B, L] per-position cross-entropy over the full windows
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="none").view(y.shape)

    if p.kind == "sliding":
        with torch.no_grad():
            per_pos = losses(model.compute_logits(h))
    elif p.kind == "slot":
        delta = torch.zeros(1, 1, h.size(-1), dtype=dtype, requires_grad=True)
        opt = torch.optim.AdamW([delta], lr=p.lr, weight_decay=p.weight_decay, eps=p.eps)
        fit_mask = scored if p.loss_positions == "scored" else valid
        for t in range(p.steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(t, p.steps, p.lr, p.lr_min)
            loss = _masked_mean(losses(model.compute_logits(h + delta)), fit_mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            per_pos = losses(model.compute_logits(h + delta))
    elif p.kind == "slot_per_sample":
        B = x.size(0)
        delta = torch.zeros(B, 1, h.size(-1), dtype=dtype, requires_grad=True)
        bias = torch.zeros(B, 1, V, dtype=dtype, requires_grad=True)
        opt = torch.optim.AdamW([delta, bias], lr=p.lr)
        for t in range(p.steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(t, p.steps, p.lr, p.lr_min)
            loss = _masked_mean(losses(model.compute_logits(h + delta, bias)), scored)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            per_pos = losses(model.compute_logits(h + delta, bias))
    else:
        raise ValueError(p.kind)
    nll = float(per_pos[scored].double().sum())
    return Record(batch, nll, int(scored.sum()), nbytes)


def reference_eval(ctx) -> tuple[float, int, int]:
    """Σ nll, tokens, bytes over the whole recipe (score-first TTT included)."""
    records = []
    if ctx.recipe.ttt is None:
        records = [reference_batch(ctx, b) for b in range(ctx.num_batches)]
    else:
        p = ctx.recipe.ttt
        trainer = ChunkTrainer(ctx.model, p, Group(0, 1, 0, torch.device("cpu")))
        n = num_chunks(len(ctx.val) - 1, p.chunk_tokens)
        batch_chunk = chunk_of_windows(ctx.windows, p.chunk_tokens)[ctx.bounds[:-1]]
        for c in range(n):
            records += [reference_batch(ctx, int(b)) for b in np.flatnonzero(batch_chunk == c)]
            if c < n - 1:
                trainer.train_chunk(ctx.val, c, n, ctx.recipe.seq_len, torch.device("cpu"))
    return merge(records)
