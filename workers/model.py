"""A compact GPT of the parameter-golf baseline family.

RMSNorm, rotary embeddings, grouped-query attention with a learned per-head query gain, relu² MLP,
per-channel residual scales, a U-Net style skip from the first half of the blocks to the second,
tied input/output embeddings and a tanh logit softcap.

The forward pass is split in two so evaluations can work on the hidden states:
`forward_hidden(idx)` gives the final-norm output H [B, T, d]; `compute_logits(H)` maps any
[..., d] tensor to softcapped logits. SLOT adds δ to H; sliding evals only take logits at the
positions they score.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.spec import ModelConfig

try:  # optional `gpu` extra; SDPA is the fallback everywhere else
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the install
    _flash_attn_func = None


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] < seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :])
        _, _, cos, sin = self._cache
        return cos[:, :seq_len], sin[:, :seq_len]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        kv_dim = self.n_kv * self.head_dim
        self.c_q = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.c_k = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.proj.zero_init = True
        self.q_gain = nn.Parameter(torch.full((self.n_head,), cfg.qk_gain_init))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv, self.head_dim)
        cos, sin = self.rotary(T, x.device)
        q = apply_rotary(rms_norm(q), cos, sin) * self.q_gain.to(q.dtype)[None, None, :, None]
        k = apply_rotary(rms_norm(k), cos, sin)
        if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
            y = _flash_attn_func(q, k, v, causal=True)  # [B, T, H, D], GQA native
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head)
            y = y.transpose(1, 2)
        return self.proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_mult * cfg.model_dim, bias=False)
        self.proj = nn.Linear(cfg.mlp_mult * cfg.model_dim, cfg.model_dim, bias=False)
        self.proj.zero_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        # how much of the block input comes from the running stream vs the embedding x0
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.num_encoder = cfg.num_layers // 2
        self.num_skip = min(self.num_encoder, cfg.num_layers - self.num_encoder)
        self.skip_weights = nn.Parameter(torch.ones(self.num_skip, cfg.model_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and getattr(m, "zero_init", False):
                nn.init.zeros_(m.weight)

    def forward_hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] → final-norm hidden states [B, T, d]."""
        x = x0 = rms_norm(self.tok_emb(idx))
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder and skips:
                x = x + self.skip_weights[i - self.num_encoder].to(x.dtype) * skips.pop()
            x = block(x, x0)
            if i < self.num_encoder:
                skips.append(x)
        return rms_norm(x)

    @property
    def head_weight(self) -> torch.Tensor:
        """[V, d]: head(h) = h · head_weightᵀ (SLOT's linear-head shortcut uses it)."""
        return self.tok_emb.weight

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., d] → raw logits [..., V] (tied embedding), before the softcap."""
        return F.linear(h, self.tok_emb.weight.to(h.dtype))

    def softcap(self, z: torch.Tensor) -> torch.Tensor:
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(z / cap)

    def compute_logits(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [..., d] → softcapped logits [..., V]. `bias` is added before the softcap
        (per-sample SLOT's logit bias)."""
        z = self.head(h)
        return self.softcap(z if bias is None else z + bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all positions, in fp32."""
        logits = self.compute_logits(self.forward_hidden(idx))
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
