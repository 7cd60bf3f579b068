"""Makespan of a 3-seed campaign on a simulated 8-GPU cluster, ours vs the seeds' way, and what a
node death costs.

    .venv/bin/python bench/makespan_bench.py

A real multi-node Ray cluster (ray.cluster_utils.Cluster: 4 nodes × 2 logical GPUs) runs the real
driver, plans, segments, resume and merge; only the GPU work is simulated, scaled 1 min → 0.6 s:
training holds 8 GPUs for 10 min per seed, and a SLOT-100 eval is 50 GPU-minutes per seed, spread
over its batches. Prints

- makespan ÷ lower bound (total GPU-work ÷ 8 GPUs) for our scheduler (trains first, each seed's
  eval sharded over every free GPU) and for the seeds' way (one unsharded eval per GPU);
- for a node removed under a running eval shard: the work lost, relative to the checkpoint
  interval, and the time from the removal to the shard running again elsewhere.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"  # for the cluster's workers

SCALE = 0.6 / 60  # seconds of bench per second of production
GPUS, SEEDS = 8, [1337, 1338, 1339]
TRAIN_S = 600 * SCALE  # 10 minutes on 8 GPUs
EVAL_GPU_S = 50 * 60 * SCALE  # SLOT-100: 50 GPU-minutes per seed
CHECKPOINT_S = 60 * SCALE


def make_spec(data: Path, store: Path, shards: int | None, batches_hint: int):
    from pipeline.spec import parse_spec

    return parse_spec(
        {
            "name": "makespan",
            "store": str(store),
            "seeds": SEEDS,
            "data": {"shards": str(data), "tokenizer": str(data / "tokenizer.model"), "val_tokens": batches_hint * 4 * 16 + 64},
            "model": {"vocab_size": 512, "num_layers": 1, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1},
            "train": {"world_size": GPUS, "gpus_per_worker": 1, "batch_tokens": 8 * 64, "seq_len": 64},
            "evals": [{"name": "slot100", "seq_len": 64, "stride": 16, "batch_seqs": 4, "shards": shards,
                       "passes": [{"kind": "slot", "steps": 100}]}],
            "checkpoint_every_s": CHECKPOINT_S,
            "cluster": {"accelerator": "cpu", "max_interruptions": 5},
        }
    )


def sim_train(spec_json, seed, store_uri, context, run_id, attempt):
    """Holds world_size GPUs for TRAIN_S, as the worker group would, then commits an artifact."""
    import ray

    from pipeline.spec import CampaignSpec
    from tests.workers.helpers import commit_random_model

    spec = CampaignSpec.model_validate(spec_json)

    @ray.remote(num_gpus=spec.train.gpus_per_worker, num_cpus=0, max_calls=0)
    def worker():
        time.sleep(TRAIN_S)

    ray.get([worker.remote() for _ in range(spec.train.world_size)])
    commit_random_model(spec.model_copy(update={"store": store_uri}), seed)
    return {"steps": 0}


def sim_eval(batch_s):
    def run(spec_json, seed, recipe, store_uri, shard, run_id, attempt):
        """The real eval shard (plan, segments, resume, done.json) with each batch's GPU time slept."""
        import workers.evaluate as ev
        from pipeline.run.tasks import eval_unit as _eval_unit
        from workers.segments import Record

        def score(ctx, b):
            time.sleep(batch_s)
            return Record(b, 1.0 + 1e-6 * b, 64, 256)

        ev.score_batch = score
        return _eval_unit(spec_json, seed, recipe, store_uri, shard, run_id, attempt)

    return run


def run_campaign(spec, batch_s, on_start=None):
    from pipeline.run.driver import Driver

    t = time.perf_counter()
    if on_start:
        threading.Thread(target=on_start, daemon=True).start()
    report = Driver(spec, log=lambda _: None, train_fn=sim_train, eval_fn=sim_eval(batch_s)).run()
    assert not report.failed, report.failed
    return time.perf_counter() - t


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.records.ledger import Ledger
    from pipeline.store import Layout, open_store
    from workers.plan import plan_geometry
    from workers.prepare import prepare, write_stdlib_corpus

    root = Path(tempfile.mkdtemp(prefix="makespan-"))
    write_stdlib_corpus(root / "docs.jsonl", limit=2500)
    prepare([root / "docs.jsonl"], 512, root / "data")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=4, num_gpus=2) for _ in range(GPUS // 2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")

    # Start the worker processes once, as a long-lived pod has them: what is measured is the
    # schedule, not this 2-core box importing torch in 8 fresh processes at once.
    @ray.remote(num_gpus=1, max_calls=0)
    def warm():
        import pipeline.run.driver  # noqa: F401
        import workers.evaluate  # noqa: F401

        time.sleep(1.0)

    ray.get([warm.remote() for _ in range(GPUS)])

    probe = make_spec(root / "data", root / "probe", None, 240)
    batches = plan_geometry(probe, probe.evals[0])[1]
    batch_s = EVAL_GPU_S / batches
    lower_bound = (len(SEEDS) * (TRAIN_S * GPUS + EVAL_GPU_S)) / GPUS
    print(f"simulated: {GPUS} GPUs; per seed: train {TRAIN_S:.1f}s × {GPUS} GPUs, eval {EVAL_GPU_S:.1f} GPU-s "
          f"in {batches} batches; checkpoint every {CHECKPOINT_S:.2f}s; lower bound {lower_bound:.2f}s")

    ours = run_campaign(make_spec(root / "data", root / "ours", None, 240), batch_s)
    seeds_way = run_campaign(make_spec(root / "data", root / "seeds", 1, 240), batch_s)
    print(f"ours       (trains first, evals sharded over free GPUs): makespan {ours:6.2f}s = {ours / lower_bound:.3f} × lower bound")
    print(f"seeds' way (one unsharded eval per GPU)                : makespan {seeds_way:6.2f}s = {seeds_way / lower_bound:.3f} × lower bound")

    # A node dies under a running eval shard.
    spec = make_spec(root / "data", root / "fault", None, 240)
    store, layout = open_store(spec.store), Layout(spec.name)
    ledger = Ledger(store, layout, "bench")
    found: dict = {}
    delay = random.Random(0).uniform(0, CHECKPOINT_S)  # a random moment between two checkpoints

    def kill_one():
        while True:
            placed = [e for e in ledger.events() if e["event"] == "placed"]
            for e in placed:
                _, seed, recipe, shard = e["unit"].split("/")
                d = Path(spec.store) / layout.shard_dir(int(seed), recipe, int(shard))
                segs = sorted(d.glob("seg-*"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
                if len(segs) >= 2 and not (d / "done.json").exists():
                    time.sleep(delay)
                    segs = sorted(d.glob("seg-*"), key=lambda p: p.stat().st_mtime)
                    node = next(n for n in nodes if n.node_id == e["node_id"])
                    found.update(unit=e["unit"], removed=time.time(), last_flush=segs[-1].stat().st_mtime, node=e["node_id"])
                    cluster.remove_node(node)
                    return
            time.sleep(0.02)

    faulted = run_campaign(spec, batch_s, on_start=kill_one)
    events = ledger.events()
    again = [e for e in events if e["event"] == "placed" and e["unit"] == found["unit"] and e["time"] > found["removed"]]
    lost_s = found["removed"] - found["last_flush"]
    print(f"node death under {found['unit']}: work lost {lost_s:.2f}s = {lost_s / CHECKPOINT_S:.2f} × checkpoint interval "
          f"({lost_s / batch_s:.1f} batches); shard running again {again[0]['time'] - found['removed']:.2f}s after the removal "
          f"on another node; campaign makespan {faulted:.2f}s with {GPUS - 2} GPUs left")
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
