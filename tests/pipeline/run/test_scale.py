"""A sweep-sized campaign through the real driver: 10,010 fake units (docs/scale.md "Scale").

The driver, scheduler, plans, store, ledger and merge are the product's; only the GPU work is a
fake that commits what the real unit would (bench/fake_units.py), run by the thread executor so no
Ray is needed. Every unit must run exactly once, every eval must merge, and a second run must find
everything DONE from its listings without starting anything.
"""

from __future__ import annotations

import threading
from collections import Counter

from bench.fake_units import CountingStore, fake_eval, fake_train
from pipeline.run.driver import Driver
from pipeline.run.executor import ThreadExecutor
from pipeline.records.ledger import Ledger, latest_states
from pipeline.store import Layout, open_store
from pipeline.records.units import Unit
from tests.conftest import make_spec

SEEDS, RECIPES, SHARDS = 10, 4, 250  # 10 × (1 + 4 × 250) = 10,010 units


def test_ten_thousand_units_each_run_exactly_once(data_dir, tmp_path, monkeypatch):
    spec = make_spec(
        data_dir, str(tmp_path / "store"), seeds=list(range(SEEDS)),
        data={"val_tokens": 16 * SHARDS + 64},
        evals=[{"name": f"r{i}", "seq_len": 64, "stride": 16, "batch_seqs": 1, "shards": SHARDS} for i in range(RECIPES)],
    )
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def count(unit: str) -> None:
        with lock:
            runs[unit] += 1

    def train(spec_json, seed, *rest):
        count(f"train/{seed}")
        return fake_train(spec_json, seed, *rest)

    def evaluate(spec_json, seed, recipe, store_uri, shard, *rest):
        count(f"eval/{seed}/{recipe}/{shard}")
        return fake_eval(spec_json, seed, recipe, store_uri, shard, *rest)

    def executor(fns):
        return ThreadExecutor(fns, gpus=16)

    report = Driver(spec, log=lambda _: None, train_fn=train, eval_fn=evaluate, executor=executor).run()

    units = SEEDS * (1 + RECIPES * SHARDS)
    assert not report.failed and not report.blocked and not report.waiting
    assert len(runs) == units and set(runs.values()) == {1}  # each unit once, none twice
    assert len(report.done) == units and len({u.id for u in report.done}) == units
    store, layout = open_store(spec.store), Layout(spec.name)
    for seed in range(SEEDS):
        for i in range(RECIPES):
            assert store.get_json(layout.result(seed, f"r{i}"))["shards"] == SHARDS
    states = latest_states(Ledger(store, layout, "check").events())  # the batched ledger has every transition
    assert sum(e["state"] == "DONE" for u, e in states.items()) == units

    # a second run reads what is DONE off one listing per seed: no request per unit
    counted = CountingStore(store)
    monkeypatch.setattr("pipeline.run.driver.open_store", lambda uri: counted)
    again = Driver(spec, log=lambda _: None, train_fn=train, eval_fn=evaluate, executor=executor).run()
    assert not again.done and len(again.skipped) == SEEDS * (1 + RECIPES) and set(runs.values()) == {1}
    assert counted.calls["list"] == SEEDS and sum(counted.calls.values()) < 3 * SEEDS, counted.calls



def test_units_the_cluster_cannot_hold_wait_as_one_per_gpu_size(data_dir, tmp_path):
    """60 TTT units of 8 GPUs on a cluster of 4: one wait, one line a minute and one reason for
    them all (not 60), every other unit runs, and the run ends with them PENDING, none blocked."""
    ttt8 = {"kind": "ttt", "chunk_tokens": 600, "epochs": 1, "batch_seqs": 4, "gpus": 8}
    spec = make_spec(
        data_dir, str(tmp_path / "store"), seeds=list(range(60)), data={"val_tokens": 2000},
        evals=[{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8, "shards": 4},
               {"name": "ttt8", "seq_len": 64, "stride": 16, "passes": [ttt8, {"kind": "sliding"}]}],
        cluster={"wait_for_capacity_s": 1},
    )
    lines: list[str] = []
    report = Driver(spec, log=lines.append, train_fn=fake_train, eval_fn=fake_eval,
                    executor=lambda fns: ThreadExecutor(fns, gpus=4)).run()
    what = "60 units (eval/0/ttt8/0, ...) wait for 8 GPUs; the cluster has 4"
    assert report.waiting == {"units of 8 GPUs": what}
    assert not report.failed and not report.blocked
    assert len(report.done) == 60 * (1 + 4)  # every training and every sw shard ran
    waits = [ln for ln in lines if "for 8 GPUs" in ln]
    assert len(waits) == 2 and waits[-1].startswith(f"gave up after 1 s: {what}"), waits
    store, layout = open_store(spec.store), Layout(spec.name)
    events = [e for e in Ledger(store, layout, "check").events() if e["event"] == "waiting"]
    assert {e["key"] for e in events} == {"units of 8 GPUs"}


def test_the_run_counts_the_units_it_ran_however_their_attempts_ended(data_dir, tmp_path):
    """A training interrupted once then DONE, an eval that fails twice: the run ran both ("ran 0
    unit(s)" was printed for a unit that ran twice and failed)."""
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[3], data={"val_tokens": 2000},
                     evals=[{"name": "sw", "seq_len": 64, "stride": 16, "batch_seqs": 8, "shards": 1}])
    tries: Counter[str] = Counter()

    def train(spec_json, seed, *rest):
        tries["train"] += 1
        if tries["train"] == 1:
            raise ConnectionResetError("[Errno 104] Connection reset by peer")  # transient: retried
        return fake_train(spec_json, seed, *rest)

    def evaluate(*args):
        raise RuntimeError("segfault in a kernel")  # unknown: retried once, then FAILED

    report = Driver(spec, log=lambda _: None, train_fn=train, eval_fn=evaluate,
                    executor=lambda fns: ThreadExecutor(fns, gpus=2)).run()
    assert list(report.failed) == [Unit.eval(3, "sw", 0)]
    assert report.ran() == "ran 2 unit(s) in 4 attempt(s) (DONE 1, FAILED 1)"
