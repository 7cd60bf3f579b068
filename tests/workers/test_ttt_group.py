"""TTT on k GPUs (docs/design.md §5, §6): a data-parallel group of real processes (gloo on this CPU box,
launched like `pipeline eval` launches them) gives the single-GPU numbers up to float rounding,
repeats its own bits, and resumes from per-rank optimizer state."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.evaluate import execute, merge_result, prepare_context, run_eval
from workers.group import Group, spawn
from workers.plan import ensure_plan

TTT = {"kind": "ttt", "chunk_tokens": 600, "epochs": 2, "lr": 0.01, "batch_seqs": 5}
RECIPES = {
    "sgd": [TTT, {"kind": "sliding"}],
    "muon-slot": [{**TTT, "optimizer": "muon", "lr": 0.002, "params": ["blocks.*"]}, {"kind": "slot", "steps": 3}],
}


def _spec(data_dir, store, name, gpus):
    passes = [{**RECIPES[name][0], "gpus": gpus}, RECIPES[name][1]]
    ev = {"name": name, "seq_len": 64, "stride": 16, "batch_seqs": 4, "passes": passes}
    return make_spec(data_dir, store, evals=[ev], data={"val_tokens": 2500})


def _fp64_rank(rank: int, world: int, spec) -> None:
    """One rank of an fp64 group, so the comparison sees the semantics, not fp32 rounding."""
    torch.set_num_threads(1)
    store, recipe = open_store(spec.store), spec.evals[0]
    ctx = prepare_context(spec, 1, recipe, store, torch.device("cpu"))
    ctx.model.double()
    plan = store.get_json(Layout(spec.name).plan(1, recipe.name))
    execute(ctx, store, Layout(spec.name), 1, 0, 0.0001, plan, Group(rank, world, rank, torch.device("cpu")))


def _fp64_result(spec) -> dict:
    commit_random_model(spec, 1)
    store, layout = open_store(spec.store), Layout(spec.name)
    ensure_plan(store, spec, 1, spec.evals[0], default_shards=1)
    gpus = spec.evals[0].gpus
    if gpus == 1:
        _fp64_rank(0, 1, spec)
    else:
        spawn(_fp64_rank, gpus, "cpu", (spec,))
    return merge_result(store, layout, 1, spec.evals[0])


@pytest.mark.parametrize("name", list(RECIPES))
def test_k_ranks_equal_one_up_to_rounding(data_dir, tmp_path, name):
    one = _fp64_result(_spec(data_dir, str(tmp_path / "k1"), name, 1))
    for k in (2, 3):  # 3 does not divide batch_seqs (5): uneven shares, a rank idle on short steps
        many = _fp64_result(_spec(data_dir, str(tmp_path / f"k{k}"), name, k))
        assert (many["tokens"], many["bytes"], many["batches"]) == (one["tokens"], one["bytes"], one["batches"])
        assert math.isclose(many["nll_sum"], one["nll_sum"], rel_tol=1e-9), (k, many["nll_sum"], one["nll_sum"])
        done = open_store(str(tmp_path / f"k{k}")).get_json(Layout("t").shard_done(1, name, 0))
        assert done["gpus"] == k
        # rank 0 scored its share of each chunk only (shares round up per chunk)
        assert many["batches"] / k <= done["run"]["scored_batches"] < many["batches"] / k + 8


def test_group_repeats_its_bits_and_checks_its_state(data_dir, tmp_path):
    """fp32, the production path (`pipeline eval` spawns the group): two runs, same bits; the saved
    state holds one optimizer state per rank and a group of another size does not load it."""
    results = []
    for run in ("a", "b"):
        spec = _spec(data_dir, str(tmp_path / run), "muon-slot", 2)
        commit_random_model(spec, 1)
        results.append(run_eval(spec, 1, "muon-slot", spec.store))
    assert results[0]["nll_sum"] == results[1]["nll_sum"]
    assert results[0]["val_bpb"] == results[1]["val_bpb"]

    store, layout = open_store(spec.store), Layout(spec.name)
    states = [k for k in store.list(layout.shard_dir(1, "muon-slot", 0)) if "/state-" in k]
    assert len(states) == 1, states
    blob = store.get(states[0])
    done = store.get_json(layout.shard_done(1, "muon-slot", 0))
    assert done["gpus"] == 2

    from workers.ttt import ChunkTrainer

    ctx = prepare_context(spec, 1, spec.evals[0], store, torch.device("cpu"))
    two = ChunkTrainer(ctx.model, spec.evals[0].ttt, Group(1, 2, 1, torch.device("cpu")))
    assert two.load_blob(blob) is not None  # rank 1 of 2 finds its own momentum buffers
    assert any(two.opts[0].state.values())
    one = ChunkTrainer(ctx.model, spec.evals[0].ttt, Group(0, 1, 0, torch.device("cpu")))
    assert one.load_blob(blob) is None


def test_group_size_must_match_the_recipe(data_dir, tmp_path):
    spec = _spec(data_dir, str(tmp_path / "st"), "sgd", 2)
    commit_random_model(spec, 1)
    store = open_store(spec.store)
    plan = ensure_plan(store, spec, 1, spec.evals[0], default_shards=1)
    ctx = prepare_context(spec, 1, spec.evals[0], store, torch.device("cpu"))
    with pytest.raises(ValueError, match="ttt.gpus is 2"):
        execute(ctx, store, Layout(spec.name), 1, 0, 1.0, plan, Group(0, 1, 0, torch.device("cpu")))


def test_cli_group_app_error_is_one_line(data_dir, tmp_path, capsys):
    """`pipeline eval` of a 2-rank TTT recipe that cannot run: the ranks' error, one line, exit 2."""
    import yaml

    from pipeline.cli import main

    spec = _spec(data_dir, str(tmp_path / "st"), "sgd", 2)
    bad = spec.evals[0].model_copy(update={"passes": [spec.evals[0].ttt.model_copy(update={"params": ["nope.*"]}), spec.evals[0].scorer]})
    spec = spec.model_copy(update={"evals": [bad]})
    commit_random_model(spec, 1)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["eval", str(f), "--seed", "1", "--recipe", "sgd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: ttt.params ['nope.*'] match no parameter of the model", err
