"""Muon (momentum + Newton–Schulz orthogonalized update) for 2-D weights, as in the parameter-golf
baseline. Adam handles the embedding and every vector/scalar parameter."""

from __future__ import annotations

import torch
import torch.distributed as dist


@torch.no_grad()
def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalize g (the quintic iteration of the baseline). Runs in `dtype`, by
    default bf16 on GPU for speed and fp32 on CPU where bf16 matmuls are slow and not needed."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * A @ A
        x = a * x + B @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, then an orthogonalized step scaled by sqrt(max(1, rows/cols)).

    Under torch.distributed each rank orthogonalizes every world_size-th matrix and the updates are
    summed with one all-reduce, so the expensive part is split across the group (gradients are
    already averaged by DDP, so every rank ends with identical weights)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, backend_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps))

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            total = sum(p.numel() for p in params)
            flat = torch.zeros(total, device=params[0].device, dtype=torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    state = self.state[p]
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    g = p.grad.add(buf, alpha=group["momentum"])
                    g = newton_schulz(g, steps=group["backend_steps"])
                    g = g * max(1.0, g.size(0) / g.size(1)) ** 0.5
                    flat[offset : offset + p.numel()] = g.reshape(-1).float()
                offset += p.numel()
            if distributed and world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


class PlainMuon(torch.optim.Optimizer):
    """PR #1176's Muon-TTT step: p −= lr · NS5(grad) for ≥ 2-D parameters (Newton–Schulz in bf16 on
    every device, as the record runs it; no momentum, no shape scale) and p −= lr · grad for the
    rest. The gradient arrives clipped and, on k ranks, already summed, so every rank takes the same
    step; there is no state to save."""

    def __init__(self, params, lr: float, backend_steps: int = 5):
        super().__init__(params, dict(lr=lr, backend_steps=backend_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.ndim >= 2:
                    g = newton_schulz(g.reshape(g.size(0), -1), group["backend_steps"], dtype=torch.bfloat16).view_as(p)
                p.add_(g.to(p.dtype), alpha=-group["lr"])
