import math

import pytest
import torch

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from tests.workers.reference import reference_eval
from workers.evaluate import execute, load_model, merge_result, prepare_context, run_eval
from workers.plan import ensure_plan
from workers.segments import decode_segment, encode_segment, Record


RECIPES = {
    "sliding-exact": {"window_filter": "exact"},
    "sliding-legacy": {"window_filter": "legacy"},
    "slot": {"passes": [{"kind": "slot", "lr": 0.1, "lr_min": 0.001, "steps": 5}]},
    "slot-all": {"passes": [{"kind": "slot", "steps": 4, "loss_positions": "all"}], "window_filter": "legacy"},
    "slot-per-sample": {"passes": [{"kind": "slot_per_sample", "steps": 4}]},
    "ttt-sgd": {"passes": [{"kind": "ttt", "chunk_tokens": 700, "epochs": 2, "lr": 0.01, "batch_seqs": 4}, {"kind": "sliding"}]},
    "ttt-muon-slot": {
        "passes": [
            {"kind": "ttt", "chunk_tokens": 900, "epochs": 1, "lr": 0.002, "optimizer": "muon", "params": ["blocks.*"]},
            {"kind": "slot", "steps": 3},
        ]
    },
}


def recipe_spec(data_dir, store, name, val_tokens=2000):
    ev = {"name": name, "seq_len": 64, "stride": 16, "batch_seqs": 8, **RECIPES[name]}
    return make_spec(data_dir, store, evals=[ev], data={"val_tokens": val_tokens})


@pytest.mark.parametrize("name", list(RECIPES))
def test_engine_matches_reference(data_dir, tmp_path, name):
    """Engine (scored-position logits, batched gathers) vs the masked full-window reference, in fp64
    so the comparison sees the semantics rather than fp32 rounding; and the fp32 engine end to end."""
    spec = recipe_spec(data_dir, str(tmp_path / "st"), name)
    commit_random_model(spec, 1)
    store, cpu = open_store(spec.store), torch.device("cpu")
    ctx = prepare_context(spec, 1, spec.evals[0], store, cpu)
    ctx.model.double()
    plan = ensure_plan(store, spec, 1, spec.evals[0], default_shards=2)
    for k in range(len(plan["shards"])):
        execute(ctx, store, Layout(spec.name), 1, k, 0.0001, plan)
    res = merge_result(store, Layout(spec.name), 1, spec.evals[0])
    ref_ctx = prepare_context(spec, 1, spec.evals[0], store, cpu)
    ref_ctx.model.double()
    nll, tokens, nbytes = reference_eval(ref_ctx)
    assert (res["tokens"], res["bytes"]) == (tokens, nbytes)
    assert math.isclose(res["nll_sum"], nll, rel_tol=1e-9), (res["nll_sum"], nll)
    assert res["val_bpb"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-9)
    if spec.evals[0].window_filter == "exact":
        assert tokens == spec.data.val_tokens - 1

    # the production path in fp32: same semantics, only rounding apart
    spec32 = spec.model_copy(update={"store": str(tmp_path / "st32")})
    commit_random_model(spec32, 1)
    res32 = run_eval(spec32, 1, name, spec32.store)
    ref32 = reference_eval(prepare_context(spec32, 1, spec32.evals[0], open_store(spec32.store), cpu))
    assert math.isclose(res32["nll_sum"], ref32[0], rel_tol=1e-8)


def test_sharded_equals_unsharded_bit_for_bit(data_dir, tmp_path):
    spec = recipe_spec(data_dir, str(tmp_path / "one"), "slot")
    commit_random_model(spec, 1)
    one = run_eval(spec, 1, "slot", spec.store, shards=1)
    many_spec = spec.model_copy(update={"store": str(tmp_path / "many")})
    commit_random_model(many_spec, 1)
    many = run_eval(many_spec, 1, "slot", many_spec.store, shards=5)
    assert (one["shards"], many["shards"]) == (1, 5)
    for k in ("nll_sum", "tokens", "bytes", "val_bpb", "val_loss", "windows", "batches"):
        assert one[k] == many[k], k
    store, layout = open_store(many_spec.store), Layout(spec.name)
    plan = store.get_json(layout.plan(1, "slot"))
    dealt = sorted(b for part in plan["shards"] for b in part)
    assert dealt == list(range(plan["batches"])) and plan["shards"][0] != sorted(plan["shards"][0])  # random order
    assert ensure_plan(store, many_spec, 1, many_spec.evals[0], default_shards=2) == plan  # written once, reused


def test_ttt_is_one_shard(data_dir, tmp_path):
    spec = recipe_spec(data_dir, str(tmp_path / "st"), "ttt-sgd")
    plan = ensure_plan(open_store(spec.store), spec, 1, spec.evals[0], default_shards=8)
    assert plan["shards"] == [list(range(plan["batches"]))]


def test_records_segments_and_resume(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "st"))
    commit_random_model(spec, 1)
    store, layout = open_store(spec.store), Layout(spec.name)
    first = run_eval(spec, 1, "sw", spec.store)
    segs = [k for k in store.list(layout.shard_dir(1, "sw", 0)) if "/seg-" in k]
    records = [r for k in segs for r in decode_segment(store.get(k))]
    assert sorted(r.batch for r in records) == list(range(first["batches"]))
    assert sum(r.tokens for r in records) == first["tokens"]
    assert math.fsum(r.nll for r in sorted(records, key=lambda r: r.batch)) == pytest.approx(first["nll_sum"], rel=1e-15)

    # Keep the first half of the segments, tear one, and resume: same bits.
    store2 = open_store(str(tmp_path / "st2"))
    commit_random_model(spec.model_copy(update={"store": store2.uri}), 1)
    half = segs[: len(segs) // 2]
    for k in half:
        store2.put(k, store.get(k))
    store2.put(layout.segment(1, "sw", 0, "torn", len(segs)), b'{"version": 1, "records": [[0, 1.0')  # torn
    again = run_eval(spec.model_copy(update={"store": store2.uri}), 1, "sw", store2.uri)
    assert again["run"]["resumed_batches"] == sum(len(decode_segment(store.get(k))) for k in half) > 0
    for k in ("nll_sum", "tokens", "bytes", "val_bpb", "val_loss"):
        assert again[k] == first[k], k


def test_segment_checksum():
    blob = encode_segment([Record(0, 1.25, 10, 20), Record(1, 0.1 + 0.2, 3, 4)])
    assert decode_segment(blob)[1].nll == 0.1 + 0.2
    assert decode_segment(blob.replace(b"1.25", b"1.26")) is None
    assert decode_segment(blob[:-5]) is None


def test_artifact_mismatch_is_an_error(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "st"))
    commit_random_model(spec, 1)
    store, layout = open_store(spec.store), Layout(spec.name)
    store.put(layout.artifact(1), store.get(layout.artifact(1)) + b"x")
    with pytest.raises(ValueError, match="sha256 does not match its manifest"):
        load_model(spec, store, 1, torch.device("cpu"))


def test_a_merge_reads_only_the_shard_commits_it_was_not_given(data_dir, tmp_path):
    """The driver holds the done.json its shards' attempts returned: the merge reads the others
    and gives the same result as a merge that reads them all."""
    from bench.fake_units import CountingStore

    spec = recipe_spec(data_dir, str(tmp_path / "st"), "sliding-exact")
    commit_random_model(spec, 1)
    store, layout, recipe = open_store(spec.store), Layout(spec.name), spec.evals[0]
    plan = ensure_plan(store, spec, 1, recipe, default_shards=3)
    ctx = prepare_context(spec, 1, recipe, store, torch.device("cpu"))
    returned = {k: execute(ctx, store, layout, 1, k, 0.0001, plan) for k in range(3)}
    assert returned == {k: store.get_json(layout.shard_done(1, recipe.name, k)) for k in range(3)}
    reads_all = CountingStore(store)
    full = merge_result(reads_all, layout, 1, recipe)
    store.delete(layout.result(1, recipe.name))
    reads_some = CountingStore(store)
    given = merge_result(reads_some, layout, 1, recipe, {0: returned[0], 2: returned[2]})
    assert given == full
    assert (reads_all.calls["get_many_json"], reads_some.calls["get_many_json"]) == (3, 1)  # only shard 1's done.json
    assert reads_some.requests == reads_all.requests - 2
