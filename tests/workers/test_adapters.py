"""Artifacts made elsewhere: the baseline's int8_clean_per_row_v1 format and model adapters
(docs/recipes.md: Eval-only campaigns, Model adapters)."""

import math

import pytest
import torch

from pipeline.records.artifacts import import_artifacts
from pipeline.spec import parse_spec
from pipeline.store import open_store
from tests.conftest import TINY_MODEL
from tests.workers import toy_adapter
from tests.workers.helpers import baseline_artifact, engine_and_reference, ours_raw_artifact
from workers.baseline_format import dequantize_baseline
from workers.artifact import read_payload
from workers.evaluate import run_eval
from workers.model import GPT


def eval_only_spec(data_dir, store, artifact, evals=None, **top):
    d = {
        "name": "eo",
        "store": str(store),
        "artifacts": {1: str(artifact)},
        "data": {"shards": str(data_dir), "tokenizer": str(data_dir / "tokenizer.model"), "val_tokens": 800},
        "evals": evals or [{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8}],
        "checkpoint_every_s": 0.0001,
        "cluster": {"accelerator": "cpu", "cpu_threads": 1},
        **top,
    }
    spec = parse_spec(d)
    import_artifacts(spec, open_store(spec.store))
    return spec


def random_gpt(seed=1) -> GPT:
    from pipeline.spec import ModelConfig

    torch.manual_seed(seed)
    m = GPT(ModelConfig(**TINY_MODEL))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_baseline_artifact_scores_like_the_same_weights_in_our_format(data_dir, tmp_path):
    m = random_gpt()
    base = tmp_path / "final_model.int8.ptz"
    base.write_bytes(baseline_artifact(m.state_dict()))
    state = dequantize_baseline(read_payload(base.read_bytes()), "x")  # what the baseline's own loader gives
    ours = tmp_path / "ours.ptz"
    ours.write_bytes(ours_raw_artifact(state, m.cfg))
    evals = [{"name": "slot", "seq_len": 64, "stride": 16, "batch_seqs": 8, "passes": [{"kind": "slot", "steps": 3}]}]
    a = eval_only_spec(data_dir, tmp_path / "a", base, evals)  # no model: → inferred from the tensors
    b = eval_only_spec(data_dir, tmp_path / "b", ours, evals)
    ra, rb = run_eval(a, 1, "slot", a.store, shards=2), run_eval(b, 1, "slot", b.store, shards=2)
    for k in ("nll_sum", "tokens", "bytes", "val_bpb"):
        assert ra[k] == rb[k], k
    assert ra["model"]["format"] == "int8_clean_per_row_v1"
    assert ra["model"]["architecture"].startswith("inferred from tensor shapes")
    assert rb["model"]["architecture"] == "the artifact's config"
    # the campaign's own model: is used when given, and said so
    c = eval_only_spec(data_dir, tmp_path / "c", base, evals, model=TINY_MODEL)
    assert run_eval(c, 1, "slot", c.store)["model"]["architecture"] == "the campaign's model:"
    assert run_eval(c, 1, "slot", c.store)["val_bpb"] == ra["val_bpb"]


def test_baseline_artifact_that_does_not_fit_the_model_is_one_line(data_dir, tmp_path):
    base = tmp_path / "final_model.int8.ptz"
    base.write_bytes(baseline_artifact(random_gpt().state_dict()))
    spec = eval_only_spec(data_dir, tmp_path / "s", base, model={**TINY_MODEL, "num_layers": 3})
    with pytest.raises(ValueError, match=r"final_model|model-imported") as e:
        run_eval(spec, 1, "sw", spec.store)
    assert "do not fit the campaign's model:" in str(e.value) and "\n" not in str(e.value)
    junk = tmp_path / "junk.ptz"
    import io, zlib
    buf = io.BytesIO()
    torch.save({"__quant_format__": "ternary_v9"}, buf)
    junk.write_bytes(zlib.compress(buf.getvalue()))
    spec = eval_only_spec(data_dir, tmp_path / "j", junk)
    with pytest.raises(ValueError, match="unsupported artifact format 'ternary_v9'; a model adapter can load it"):
        run_eval(spec, 1, "sw", spec.store)


ADAPTER_RECIPES = {
    "sliding": [{"kind": "sliding"}],
    "slot-bf16": [{"kind": "slot", "steps": 3, "logits_dtype": "bf16"}],
    "slot-padded": [{"kind": "slot", "steps": 3, "loss_positions": "padded", "schedule": "constant"}],
    "per-sample": [{"kind": "slot_per_sample", "steps": 3}],
    "ttt-adamw-then-slot": [{"kind": "ttt", "chunk_tokens": 300, "epochs": 1, "optimizer": "adamw", "lr": 0.003, "batch_seqs": 4, "then": "after"}, {"kind": "slot", "steps": 2}],
    "ttt-sgd": [{"kind": "ttt", "chunk_tokens": 300, "epochs": 1, "lr": 0.01, "batch_seqs": 4}, {"kind": "sliding"}],
}


@pytest.mark.parametrize("name", list(ADAPTER_RECIPES))
def test_adapter_model_matches_reference(data_dir, tmp_path, name):
    """A model that is not our GPT (no linear-head shortcut) through every kind of pass, fp64."""
    path = tmp_path / "toy.pt"
    toy_adapter.save(toy_adapter.make(), path)
    ev = [{"name": name, "seq_len": 64, "stride": 16, "batch_seqs": 8, "window_filter": "all", "passes": ADAPTER_RECIPES[name]}]
    spec = eval_only_spec(data_dir, tmp_path / "st", path, ev, model={"adapter": "tests.workers.toy_adapter:load"})
    res, (nll, tokens, nbytes), ctx = engine_and_reference(spec)
    assert isinstance(ctx.model, toy_adapter.PrefixMeanLM) and ctx.model_info["format"] == "adapter"
    assert (res["tokens"], res["bytes"]) == (tokens, nbytes)
    assert math.isclose(res["nll_sum"], nll, rel_tol=1e-9), (res["nll_sum"], nll)


def not_a_module(path, spec):
    return object()


def test_adapter_contract_errors_are_one_line(data_dir, tmp_path):
    path = tmp_path / "toy.pt"
    toy_adapter.save(toy_adapter.make(), path)
    spec = eval_only_spec(data_dir, tmp_path / "a", path, model={"adapter": "tests.workers.test_adapters:not_a_module"})
    with pytest.raises(ValueError, match="has no forward_hidden, compute_logits"):
        run_eval(spec, 1, "sw", spec.store)
    spec = eval_only_spec(data_dir, tmp_path / "b", path, model={"adapter": "tests.workers.nowhere:load"})
    with pytest.raises(ImportError, match="model.adapter: cannot load 'tests.workers.nowhere:load'"):
        run_eval(spec, 1, "sw", spec.store)
