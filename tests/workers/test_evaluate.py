import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.data import target_bytes
from workers.evaluate import load_model, prepare_context, run_eval
from workers.segments import decode_segment, encode_segment, Record


def reference_sliding(ctx) -> tuple[float, int, int]:
    """Straightforward: every window on its own, logits for the whole window, then a mask."""
    nll, tokens, nbytes = 0.0, 0, 0
    val, w = ctx.val, ctx.windows
    with torch.no_grad():
        for s, n, lo in zip(w.starts.tolist(), w.lens.tolist(), w.score_lo.tolist()):
            x = torch.from_numpy(val[s : s + n])[None]
            y = torch.from_numpy(val[s + 1 : s + n + 1])
            logits = ctx.model.compute_logits(ctx.model.forward_hidden(x))[0]
            mask = torch.zeros(n, dtype=torch.bool)
            mask[lo:] = True
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            nll += float(losses[mask].double().sum())
            tokens += int(mask.sum())
            nbytes += int(target_bytes(val[s + lo : s + n], val[s + lo + 1 : s + n + 1], *ctx.tables).sum())
    return nll, tokens, nbytes


@pytest.mark.parametrize("window_filter", ["exact", "legacy"])
def test_sliding_matches_reference(data_dir, tmp_path, window_filter):
    spec = make_spec(data_dir, str(tmp_path / "st"), evals=[{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8, "window_filter": window_filter}])
    commit_random_model(spec, 1)
    res = run_eval(spec, 1, "sw", spec.store)
    store = open_store(spec.store)
    ctx = prepare_context(spec, 1, spec.evals[0], store, torch.device("cpu"))
    nll, tokens, nbytes = reference_sliding(ctx)
    assert res["tokens"] == tokens and res["bytes"] == nbytes
    assert math.isclose(res["nll_sum"], nll, rel_tol=1e-9)
    assert res["val_bpb"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-9)
    assert res["windows"] == len(ctx.windows)
    if window_filter == "exact":
        assert tokens == spec.data.val_tokens - 1


def test_records_segments_and_resume(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "st"))
    commit_random_model(spec, 1)
    store, layout = open_store(spec.store), Layout(spec.name)
    first = run_eval(spec, 1, "sw", spec.store)
    segs = store.list(layout.shard_dir(1, "sw", 0))
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
    store2.put(layout.segment(1, "sw", 0, len(segs)), b'{"version": 1, "records": [[0, 1.0')  # torn
    again = run_eval(spec.model_copy(update={"store": store2.uri}), 1, "sw", store2.uri)
    assert again["resumed_batches"] == sum(len(decode_segment(store.get(k))) for k in half) > 0
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
        load_model(store, layout, 1, torch.device("cpu"))
