"""The simulation against the real driver: the same campaign of fake units (bench/fake_units.py),
each taking the time the throughput table gives it, run by the real Driver on a ThreadExecutor of
N GPUs and simulated on the mix 1xNxH100. The driver's ledger must show the units starting in the
order the simulation starts them, with the same shards; no timing is asserted (the machine is shared)."""

from __future__ import annotations

import itertools
import time

import pytest

from bench.fake_units import _plan_shards, fake_eval, fake_train
from pipeline.run.driver import Driver
from pipeline.run.executor import ThreadExecutor
from pipeline.records.ledger import Ledger
from pipeline.plan.mixes import Mix, PodType
from pipeline.plan.simulate import Durations, simulate
from pipeline.plan.throughput import GpuRates, RecipeRate, ThroughputTable, TrainRate
from pipeline.plan.work import campaign_work
from pipeline.store import Layout
from tests.conftest import make_spec

# far apart next to the driver's own latency (a loop turn, a store write), so the order is the table's
TABLE = ThroughputTable(
    campaign="t", source="test", measured_at=0.0,
    gpu_types={"H100": GpuRates(
        train=TrainRate(step_s=0.25, startup_s=0.3, samples=1),  # 6 steps: 1.8 s
        recipes={"sw": RecipeRate(batch_s=0.1, startup_s=0.2, samples=1), "ttt": RecipeRate(batch_s=0.09, startup_s=0.4, samples=1)},
    )},
)


def paced(table: ThroughputTable):
    """fake_train / fake_eval that first sleep the unit's time by the table."""
    rates = table.gpu_types["H100"]

    def train(spec_json, seed, store_uri, context, run_id, attempt):
        time.sleep(rates.train.startup_s + spec_json["train"]["max_steps"] * rates.train.step_s)
        return fake_train(spec_json, seed, store_uri, context, run_id, attempt)

    def evaluate(spec_json, seed, recipe, store_uri, shard, run_id, attempt):
        n = len(_plan_shards(store_uri, Layout(spec_json["name"]).plan(seed, recipe))[shard])
        r = rates.recipes[recipe]
        time.sleep(r.startup_s + n * r.batch_s)
        return fake_eval(spec_json, seed, recipe, store_uri, shard, run_id, attempt)

    return train, evaluate


@pytest.mark.parametrize("gpus", [4, 2])
def test_simulation_matches_the_driver(data_dir, tmp_path, gpus):
    evals = [
        {"name": "sw", "seq_len": 64, "stride": 32, "batch_seqs": 8},
        {"name": "ttt", "seq_len": 64, "stride": 32, "batch_seqs": 8,
         "passes": [{"kind": "ttt", "chunk_tokens": 1024, "epochs": 1, "gpus": 2}, {"kind": "sliding"}]},
    ]
    spec = make_spec(data_dir, str(tmp_path / "store"), seeds=[1, 2], evals=evals, data={"val_tokens": 1500})
    work = campaign_work(spec)
    sim = simulate(spec, work, Mix(f"1x{gpus}xH100", (PodType(gpus, "H100", 2.0, "test"),)), Durations(spec, work, TABLE))

    train, evaluate = paced(TABLE)
    driver = Driver(spec, log=lambda m: None, train_fn=train, eval_fn=evaluate, group_eval_fn=evaluate,
                    executor=lambda fns: ThreadExecutor(fns, gpus, threads=8))
    report = driver.run()
    assert not report.failed and not report.waiting
    events = Ledger(driver.store, Layout(spec.name), "t").events()
    started = [e["unit"] for e in events if e.get("event") == "state" and e.get("state") == "RUNNING"]
    # units the simulation starts at the same time (two trainings ending together) may start in
    # either order in the driver: compared as a set, each group in its place
    groups = [sorted(a.unit for a in g) for _, g in itertools.groupby(sim.attempts, key=lambda a: round(a.start, 6))]
    at = [0, *itertools.accumulate(len(g) for g in groups)]
    assert [sorted(started[a:b]) for a, b in zip(at, at[1:])] == groups and len(started) == at[-1]
    for r in work.recipes:  # the driver's plans cut the batches as the simulation did
        for seed in spec.seeds:
            stored = [len(s) for s in driver.store.get_json(Layout(spec.name).plan(seed, r.name))["shards"]]
            assert stored == r.shard_batches(seed, gpus)
    assert 0 < sim.utilisation <= 1 + 1e-9 and sim.total_usd >= sim.useful_usd
    print(f"{gpus} GPUs: simulated makespan {sim.makespan_s:.2f} s, the driver's {report.wall_s:.2f} s")  # seen with -s, not asserted
