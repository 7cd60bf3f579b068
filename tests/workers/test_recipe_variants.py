"""The records' recipe variants (docs/recipes.md: Recipe variants): each against the straightforward fp64
reference of tests/workers/reference.py to 1e-9 relative, and bit-exact under sharding and resume."""

import math

import pytest
from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model, engine_and_reference
from workers.evaluate import run_eval
from workers.plan import val_length

PR1176_SLOT = {"kind": "slot", "lr": 0.05, "steps": 3, "schedule": "constant", "loss_positions": "padded", "logits_dtype": "bf16"}
PR1722_PER_SAMPLE = {
    "kind": "slot_per_sample", "lr": 0.008, "lr_min": 0.001, "steps": 4, "weight_decay": 1e-8, "eps": 1e-5,
    "betas": [0.9, 0.95], "progress": "t/(steps-1)",
}
VARIANTS = {
    "all-windows": {"window_filter": "all"},
    "rank-split-slot": {"rank_split": 3, "window_filter": "legacy", "passes": [{"kind": "slot", "steps": 3}]},
    "slot-constant": {"passes": [{"kind": "slot", "lr": 0.02, "steps": 3, "schedule": "constant"}]},
    "slot-progress-betas": {"passes": [{"kind": "slot", "steps": 4, "progress": "t/(steps-1)", "betas": [0.9, 0.95]}]},
    "slot-padded-bf16": {"window_filter": "all", "rank_split": 2, "passes": [PR1176_SLOT]},
    "slot-context": {"passes": [{"kind": "slot", "steps": 3, "loss_positions": "context"}]},
    "slot-all-bf16": {"passes": [{"kind": "slot", "steps": 3, "loss_positions": "all", "logits_dtype": "bf16"}]},
    "per-sample-1722": {"window_filter": "all", "passes": [PR1722_PER_SAMPLE]},
    "per-sample-context": {"passes": [{"kind": "slot_per_sample", "steps": 3, "loss_positions": "context"}]},
    "ttt-adamw": {"passes": [{"kind": "ttt", "chunk_tokens": 300, "epochs": 1, "lr": 0.001, "optimizer": "adamw", "betas": [0.9, 0.95], "batch_seqs": 4}, {"kind": "sliding"}]},
    "ttt-muon-plain": {"passes": [{"kind": "ttt", "chunk_tokens": 300, "epochs": 1, "lr": 0.002, "optimizer": "muon_plain", "batch_seqs": 4}, {"kind": "sliding"}]},
    "pr1176-ttt-after-slot": {
        "window_filter": "all", "rank_split": 2,
        "passes": [{"kind": "ttt", "chunk_tokens": 300, "epochs": 1, "lr": 0.002, "optimizer": "muon_plain", "then": "after", "batch_seqs": 4}, PR1176_SLOT],
    },
    "val-truncate": {"val_truncate": True, "passes": [{"kind": "slot", "steps": 2}]},
}


def variant_spec(data_dir, store, name, val_tokens=800):
    ev = {"name": name, "seq_len": 64, "stride": 16, "batch_seqs": 8, **VARIANTS[name]}
    return make_spec(data_dir, store, evals=[ev], data={"val_tokens": val_tokens})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_reference(data_dir, tmp_path, name):
    spec = variant_spec(data_dir, str(tmp_path / "st"), name)
    recipe = spec.evals[0]
    commit_random_model(spec, 1)
    res, (nll, tokens, nbytes), _ = engine_and_reference(spec)
    assert (res["tokens"], res["bytes"]) == (tokens, nbytes)
    assert math.isclose(res["nll_sum"], nll, rel_tol=1e-9), (res["nll_sum"], nll)
    assert res["legality"] == recipe.legality.as_dict()


def test_val_truncate_keeps_whole_sequences():
    from pipeline.spec import EvalRecipe

    r = EvalRecipe(name="t", seq_len=1024, val_truncate=True)
    assert val_length(62_021_633, r) == 62_021_633  # the standard val set: a no-op
    assert val_length(62_021_633, EvalRecipe(name="t", seq_len=2048, val_truncate=True)) == 62_021_633
    assert val_length(5000, r) == 4 * 1024 + 1
    assert val_length(5000, EvalRecipe(name="t", seq_len=1024)) == 5000
    with pytest.raises(ValueError, match="val_truncate leaves no full seq_len"):
        val_length(1000, r)


def _drop_progress(store, layout, seed, recipe):
    """An interrupted eval: no result, no done.json, only the older half of the segments."""
    store.delete(layout.result(seed, recipe))
    for key in store.list(layout.eval_dir(seed, recipe)):
        if key.endswith("/done.json"):
            store.delete(key)
    segs = sorted((k for k in store.list(layout.eval_dir(seed, recipe)) if "/seg-" in k), key=lambda k: int(k.rsplit("-", 1)[1]))
    for k in segs[len(segs) // 2 :]:
        store.delete(k)
    return len(segs) - len(segs) // 2


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_resume_and_shards_are_bit_exact(data_dir, tmp_path, name):
    spec = variant_spec(data_dir, str(tmp_path / "one"), name)
    commit_random_model(spec, 1)
    one = run_eval(spec, 1, name, spec.store, shards=1)
    keys = ("nll_sum", "tokens", "bytes", "val_bpb", "val_loss", "windows", "batches")
    if spec.evals[0].shardable:
        many = spec.model_copy(update={"store": str(tmp_path / "many")})
        commit_random_model(many, 1)
        sharded = run_eval(many, 1, name, many.store, shards=3)
        assert sharded["shards"] == 3
        assert all(sharded[k] == one[k] for k in keys)
    store, layout = open_store(spec.store), Layout(spec.name)
    dropped = _drop_progress(store, layout, 1, name)
    assert dropped > 0
    again = run_eval(spec, 1, name, spec.store, shards=1)
    assert again["run"]["resumed_batches"] > 0
    assert all(again[k] == one[k] for k in keys), [(k, again[k], one[k]) for k in keys if again[k] != one[k]]
