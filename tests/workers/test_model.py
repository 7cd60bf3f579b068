import pytest
import torch
import torch.nn.functional as F

from pipeline.spec import ModelConfig
from workers.artifact import export_artifact, load_artifact
from workers.model import GPT

CFG = ModelConfig(vocab_size=96, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2)


def randomized(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def test_forward_is_hidden_then_logits():
    m = randomized()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    y = torch.randint(0, CFG.vocab_size, (2, 16))
    h = m.forward_hidden(x)
    assert h.shape == (2, 16, CFG.model_dim)
    logits = m.compute_logits(h)
    assert logits.abs().max() <= CFG.logit_softcap
    assert torch.allclose(m(x, y), F.cross_entropy(logits.reshape(-1, CFG.vocab_size), y.reshape(-1)))


def test_causal():
    m = randomized()
    x = torch.randint(0, CFG.vocab_size, (1, 12))
    x2 = x.clone()
    x2[0, 8:] = (x2[0, 8:] + 1) % CFG.vocab_size
    h1, h2 = m.forward_hidden(x), m.forward_hidden(x2)
    assert torch.equal(h1[:, :8], h2[:, :8]) and not torch.equal(h1[:, 8:], h2[:, 8:])


def test_artifact_round_trip():
    cfg = ModelConfig(vocab_size=512, num_layers=2, model_dim=256, num_heads=4, num_kv_heads=2)
    m = randomized(cfg)
    blob = export_artifact(m.state_dict(), cfg)
    cfg2, state = load_artifact(blob)
    assert cfg2 == cfg
    for k, v in m.state_dict().items():
        err = (state[k] - v).abs().max() / v.abs().max()
        assert err < 0.01, k  # int8 per row for big matrices, fp16/fp32 for the rest
    assert torch.equal(state["blocks.0.attn_scale"], m.state_dict()["blocks.0.attn_scale"])
    m2 = GPT(cfg2)
    m2.load_state_dict(state)
    assert len(blob) < 0.5 * sum(v.numel() * 4 for v in m.state_dict().values())
    with pytest.raises(ValueError, match="x.ptz: not a readable artifact"):
        load_artifact(b"garbage", "x.ptz")
