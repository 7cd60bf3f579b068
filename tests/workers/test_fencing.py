"""Fenced attempts: two attempts of one eval unit run at once (a Ray retry while the first still
runs behind a partition, a second driver, `pipeline eval` by hand) and the campaign still ends
with the uninterrupted number; neither overwrites the other's objects."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import Layout, open_store
from tests.conftest import make_spec
from tests.workers.helpers import commit_random_model
from workers.evaluate import run_eval

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    # one window per batch, flushed after every batch: the race the issue reproduced
    "slot": {"seq_len": 64, "stride": 16, "batch_seqs": 1, "passes": [{"kind": "slot", "steps": 4}]},
    "ttt": {
        "seq_len": 64, "stride": 16, "batch_seqs": 2,
        "passes": [{"kind": "ttt", "chunk_tokens": 400, "epochs": 1, "lr": 0.01, "batch_seqs": 4}, {"kind": "sliding"}],
    },
}
ATTEMPT = """
import json, sys, yaml
from pipeline.spec import parse_spec
from workers.evaluate import run_shard
spec = parse_spec(yaml.safe_load(open(sys.argv[1])))
print(json.dumps(run_shard(spec, 1, sys.argv[2], spec.store, 0)))
"""


@pytest.mark.parametrize("name", list(RECIPES))
def test_two_attempts_of_one_unit_at_once(data_dir, tmp_path, name):
    over = {"seeds": [1], "evals": [{"name": name, **RECIPES[name]}], "data": {"val_tokens": 2500}}
    ref = make_spec(data_dir, str(tmp_path / "ref"), **over)
    commit_random_model(ref, 1)
    expected = run_eval(ref, 1, name, ref.store)

    spec = make_spec(data_dir, str(tmp_path / "store"), **over)
    commit_random_model(spec, 1)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    procs = []
    for delay in (0.0, 0.3):
        time.sleep(delay)
        procs.append(subprocess.Popen([sys.executable, "-c", ATTEMPT, str(f), name], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    returned = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        returned.append(json.loads(out.decode().strip().splitlines()[-1]))

    store, layout = open_store(spec.store), Layout(spec.name)
    segs = [k.rsplit("/", 1)[1] for k in store.list(layout.shard_dir(1, name, 0)) if "/seg-" in k]
    attempts = {s.split("-")[1] for s in segs}
    assert len(attempts) == 2, segs  # both attempts wrote progress, each under its own names
    done = store.get_json(layout.shard_done(1, name, 0))
    assert done["attempt"] in attempts  # one commit: the first attempt to finish
    assert returned == [done, done]  # each attempt returns the shard's commit, the loser too (the driver merges it)
    from workers.result import merge_result

    got = merge_result(store, layout, 1, spec.eval_recipe(name))
    assert got["conflicts"] == []  # where both scored a batch, they agree bit for bit
    for k in ("val_bpb", "nll_sum", "tokens", "bytes", "windows", "batches"):
        assert got[k] == expected[k], k


def test_records_that_disagree_are_marked_not_mixed_silently(data_dir, tmp_path):
    from workers.result import merge_result
    from workers.segments import Record, encode_segment

    spec = make_spec(data_dir, str(tmp_path / "s"), seeds=[1], evals=[{"name": "sw", **RECIPES["slot"], "passes": [{"kind": "sliding"}]}])
    commit_random_model(spec, 1)
    first = run_eval(spec, 1, "sw", spec.store)
    store, layout = open_store(spec.store), Layout(spec.name)
    store.delete(layout.result(1, "sw"))
    seg = next(k for k in store.list(layout.shard_dir(1, "sw", 0)) if "/seg-" in k)
    from workers.segments import decode_segment

    r = decode_segment(store.get(seg))[0]
    # another attempt that scored batch r.batch differently (a non-deterministic GPU kernel)
    store.put(layout.segment(1, "sw", 0, "ffffffffffff", 0), encode_segment([Record(r.batch, r.nll + 1e-9, r.tokens, r.bytes)]))
    got = merge_result(store, layout, 1, spec.eval_recipe("sw"))
    assert got["nll_sum"] == first["nll_sum"]  # the first record in key order counts, every time
    assert [c["batch"] for c in got["conflicts"]] == [r.batch]
    assert got["conflicts"][0]["other"].endswith("seg-ffffffffffff-000000")
