"""A model adapter that is not our GPT, for the adapter tests (docs/recipes.md: Model adapters): a causal
"running mean" LM (embedding, cumulative mean over the prefix, a tanh MLP, an untied head with a
softcap). It has no `head`/`head_weight`, so SLOT takes the generic compute_logits path."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.spec import CampaignSpec


class PrefixMeanLM(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.cap = 20.0

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids)
        steps = torch.arange(1, ids.size(1) + 1, device=ids.device, dtype=e.dtype)[None, :, None]
        prefix = e.cumsum(dim=1) / steps  # position t sees ids ≤ t only
        return F.rms_norm(torch.tanh(self.mix(torch.cat([e, prefix], dim=-1))), (e.size(-1),))

    def compute_logits(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        z = self.out(h)
        return self.cap * torch.tanh((z if bias is None else z + bias) / self.cap)


def save(model: PrefixMeanLM, path) -> None:
    torch.save({"vocab": model.emb.num_embeddings, "dim": model.emb.embedding_dim, "state": model.state_dict()}, path)


def load(path: str, spec: CampaignSpec) -> PrefixMeanLM:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = PrefixMeanLM(blob["vocab"], blob["dim"])
    model.load_state_dict(blob["state"])
    return model


def make(vocab: int = 512, dim: int = 32, seed: int = 0) -> PrefixMeanLM:
    torch.manual_seed(seed)
    return PrefixMeanLM(vocab, dim)
