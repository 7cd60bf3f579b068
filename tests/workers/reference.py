"""Straightforward reference evals: a Python loop builds each window, the model computes logits for
every position of every window, and a mask picks the scored ones. Same semantics as the engine
(docs/design.md §5), none of its shortcuts: no linear-head trick, its own lr schedules, and its own TTT
steps for AdamW and PR #1176's Muon-TTT. Used by the tests for agreement and by bench/ for speed."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from workers.data import target_bytes
from workers.segments import Record, merge
from workers.group import Group
from workers.ttt import ChunkTrainer, chunk_lr, num_chunks
from workers.windows import chunk_of_windows


def _windows(ctx, lo: int, hi: int, width: int | None = None):
    val, w = ctx.val, ctx.windows
    L = max(int(w.lens[lo:hi].max()), width or 0)
    B = hi - lo
    x = torch.zeros(B, L, dtype=torch.long)
    y = torch.zeros(B, L, dtype=torch.long)
    scored = torch.zeros(B, L, dtype=torch.bool)
    valid = torch.zeros(B, L, dtype=torch.bool)
    target_at = torch.full((B, L), -1, dtype=torch.long)  # index in val of each position's target
    nbytes = 0
    for r, i in enumerate(range(lo, hi)):
        s, n, slo = int(w.starts[i]), int(w.lens[i]), int(w.score_lo[i])
        x[r, :n] = torch.from_numpy(val[s : s + n])
        y[r, :n] = torch.from_numpy(val[s + 1 : s + n + 1])
        scored[r, slo:n] = True
        valid[r, :n] = True
        target_at[r, :n] = torch.arange(s + 1, s + n + 1)
        nbytes += int(target_bytes(val[s + slo : s + n], val[s + slo + 1 : s + n + 1], *ctx.tables).sum())
    return x, y, scored, valid, target_at, nbytes


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (losses * mask).sum() / mask.sum().clamp_min(1)


def _lr(t: int, p) -> float:
    if p.schedule == "constant":
        return p.lr
    span = p.steps if p.progress == "t/steps" else p.steps - 1
    frac = t / span if span > 0 else 0.0
    return p.lr_min + 0.5 * (p.lr - p.lr_min) * (1.0 + math.cos(math.pi * frac))


def _fit_mask(p, scored, valid, target_at):
    if p.loss_positions == "scored":
        return scored
    if p.loss_positions == "all":
        return valid
    if p.loss_positions == "padded":
        return torch.ones_like(valid)
    if p.kind == "slot":  # context: targets scored by earlier batches only
        return valid & (target_at < target_at[scored].min())
    # per-sample context: each window's positions before its first scored one
    first = torch.where(scored, torch.arange(scored.size(1)), scored.size(1)).min(dim=1).values
    return valid & (torch.arange(scored.size(1))[None, :] < first[:, None])


def reference_batch(ctx, batch: int) -> Record:
    lo, hi = int(ctx.bounds[batch]), int(ctx.bounds[batch + 1])
    model, p = ctx.model, ctx.recipe.scorer
    padded = p.kind == "slot" and p.loss_positions == "padded"
    x, y, scored, valid, target_at, nbytes = _windows(ctx, lo, hi, ctx.recipe.seq_len if padded else None)
    with torch.no_grad():
        h = model.forward_hidden(x)
        V = model.compute_logits(h[:1, :1]).size(-1)
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32

    def losses(logits):  # [B, L] per-position cross-entropy over the full windows
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="none").view(y.shape)

    if p.kind == "sliding":
        with torch.no_grad():
            per_pos = losses(model.compute_logits(h))
    else:
        if p.kind == "slot":
            delta = torch.zeros(1, 1, h.size(-1), dtype=dtype, requires_grad=True)
            params = [delta]
            cast = (lambda z: z.to(torch.bfloat16).to(z.dtype)) if p.logits_dtype == "bf16" else (lambda z: z)
            logits_fn = lambda: model.compute_logits(cast(h + delta))  # noqa: E731
        else:
            delta = torch.zeros(x.size(0), 1, h.size(-1), dtype=dtype, requires_grad=True)
            bias = torch.zeros(x.size(0), 1, V, dtype=dtype, requires_grad=True)
            params = [delta, bias]
            logits_fn = lambda: model.compute_logits(h + delta, bias)  # noqa: E731
        opt = torch.optim.AdamW(params, lr=p.lr, betas=tuple(p.betas), eps=p.eps, weight_decay=p.weight_decay)
        fit_mask = _fit_mask(p, scored, valid, target_at)
        for t in range(p.steps):
            for g in opt.param_groups:
                g["lr"] = _lr(t, p)
            loss = _masked_mean(losses(logits_fn()), fit_mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            per_pos = losses(logits_fn())
    nll = float(per_pos[scored].double().sum())
    return Record(batch, nll, int(scored.sum()), nbytes)


def _newton_schulz_bf16(g: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)
    if x.size(0) > x.size(1):
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if g.size(0) > g.size(1) else x


class _ReferenceTrainer:
    """AdamW and PR #1176's Muon-TTT (p −= lr · NS5(clipped grad) for ≥2-D, p −= lr · grad else)."""

    def __init__(self, model, p):
        import fnmatch

        self.model, self.p = model, p
        self.params = [t for n, t in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in p.params)]
        self.adamw = torch.optim.AdamW(self.params, lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay) if p.optimizer == "adamw" else None

    def train_chunk(self, val, c, n, seq_len, device):
        p = self.p
        lo = c * p.chunk_tokens
        hi = min(lo + p.chunk_tokens, val.size - 1)
        n_seq = (hi - lo) // seq_len
        lr = chunk_lr(c, n, p.lr)
        for t in self.params:
            t.requires_grad_(True)
        for _ in range(p.epochs):
            for i in range(0, n_seq, p.batch_seqs):
                m = min(p.batch_seqs, n_seq - i)
                x = torch.from_numpy(val[lo + i * seq_len : lo + (i + m) * seq_len].reshape(m, seq_len))
                y = torch.from_numpy(val[lo + i * seq_len + 1 : lo + (i + m) * seq_len + 1].reshape(m, seq_len))
                logits = self.model.compute_logits(self.model.forward_hidden(x))
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
                for t in self.params:
                    t.grad = None
                loss.backward()
                if p.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, p.grad_clip)
                if self.adamw is not None:
                    for g in self.adamw.param_groups:
                        g["lr"] = lr
                    self.adamw.step()
                    continue
                with torch.no_grad():
                    for t in self.params:
                        g = t.grad
                        if g.ndim >= 2:
                            g = _newton_schulz_bf16(g.reshape(g.size(0), -1), p.muon_backend_steps).view_as(t)
                        t -= lr * g.to(t.dtype)
        for t in self.params:
            t.requires_grad_(False)


def reference_eval(ctx) -> tuple[float, int, int]:
    """Σ nll, tokens, bytes over the whole recipe (score-first TTT, or TTT then scoring, included)."""
    if ctx.recipe.ttt is None:
        return merge([reference_batch(ctx, b) for b in range(ctx.num_batches)])
    p = ctx.recipe.ttt
    if p.optimizer in ("adamw", "muon_plain"):
        trainer = _ReferenceTrainer(ctx.model, p)
    else:
        trainer = ChunkTrainer(ctx.model, p, Group(0, 1, 0, torch.device("cpu")))
    n = num_chunks(len(ctx.val) - 1, p.chunk_tokens)
    if p.then == "after":
        for c in range(n - 1):
            trainer.train_chunk(ctx.val, c, n, ctx.recipe.seq_len, torch.device("cpu"))
        return merge([reference_batch(ctx, b) for b in range(ctx.num_batches)])
    records = []
    batch_chunk = chunk_of_windows(ctx.windows, p.chunk_tokens)[ctx.bounds[:-1]]
    for c in range(n):
        records += [reference_batch(ctx, int(b)) for b in np.flatnonzero(batch_chunk == c)]
        if c < n - 1:
            trainer.train_chunk(ctx.val, c, n, ctx.recipe.seq_len, torch.device("cpu"))
    return merge(records)
