"""How the driver scales with the number of units: seeds × recipes × shards of fake units.

    .venv/bin/python bench/scale_bench.py [--seeds 100] [--recipes 4] [--shards 64] [--gpus 16] [--s3]

The real driver, plans, store and merge run on a local Ray instance; each unit's work is replaced
by a fake that commits what the real unit would (a training's manifest; an eval shard's one
segment of records and its done.json) and returns at once, so what is measured is the driver.
Prints, measured in one run:

- time to first launch, fresh and resuming a store where half the units are DONE;
- driver CPU per unit and store requests per unit (the driver's own, counted on its Store);
- overhead = driver busy (CPU) time ÷ the campaign's GPU time at realistic durations (a training
  10 min on 8 GPUs, a SLOT-100 eval 50 GPU-minutes per seed and recipe, split over its shards);
- the same at 2× the seeds: the cost ratio (1.0 is linear; 2.0 would mean quadratic).

Its last line: `scale: overhead X %, first launch Y s, resume Z s, 2x units W x`. Issue goals: first
launch ≤ 10 s and resume ≤ 30 s on loopback S3, overhead ≤ 1 %, 2× units ≤ 2.2× the cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"  # for Ray's workers

TRAIN_GPU_S = 600 * 8  # 10 minutes on 8 GPUs
EVAL_GPU_S = 50 * 60  # SLOT-100: 50 GPU-minutes per seed and recipe


def fake_train(spec_json, seed, store_uri, context, run_id, attempt):
    """Commits a manifest, as a finished training would (no artifact: the fake evals never load one)."""
    from pipeline.spec import CampaignSpec
    from pipeline.store import Layout, open_store

    spec = CampaignSpec.model_validate(spec_json)
    open_store(store_uri).put_new_json(Layout(spec.name).manifest(seed), {"version": 1, "seed": seed, "sha256": "0" * 64, "bytes": 0, "train": {"steps": 0}})
    return {"steps": 0}


def fake_eval(spec_json, seed, recipe, store_uri, shard, run_id, attempt):
    """One segment with a record per batch of the shard, then done.json: what merge_result reads."""
    from pipeline.spec import CampaignSpec
    from pipeline.store import Layout, open_store
    from workers.segments import Record, encode_segment

    spec = CampaignSpec.model_validate(spec_json)
    store, layout = open_store(store_uri), Layout(spec.name)
    batches = store.get_json(layout.plan(seed, recipe))["shards"][shard]
    store.put_new(layout.segment(seed, recipe, shard, attempt, 0), encode_segment([Record(b, 1.0 + 1e-6 * b, 16, 64) for b in batches]))
    done = {"version": 1, "shard": shard, "attempt": attempt, "batches": len(batches), "gpus": 1, "artifact_sha256": "0" * 64,
            "unigram_bpb": 0.0, "run": {k: 0 for k in ("resumed_batches", "scored_batches", "score_s", "ttt_s", "flush_s", "wall_s")}}
    store.put_new_json(layout.shard_done(seed, recipe, shard), done)
    return done


class Counting:
    """The driver's Store with every request counted."""

    def __init__(self, inner):
        self.inner, self.requests = inner, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def counted(*a, **kw):
            self.requests += 1
            return attr(*a, **kw)

        return counted


def spec_for(data: Path, store: str, seeds: int, recipes: int, shards: int):
    from pipeline.spec import parse_spec

    return parse_spec({
        "name": "scale", "store": store, "seeds": list(range(seeds)),
        "data": {"shards": str(data), "tokenizer": str(data / "tokenizer.model"), "val_tokens": 16 * shards * 2 + 64},
        "model": {"vocab_size": 512, "num_layers": 1, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1},
        "train": {"world_size": 8, "gpus_per_worker": 1, "batch_tokens": 512, "seq_len": 64},
        "evals": [{"name": f"r{i}", "seq_len": 64, "stride": 16, "batch_seqs": 1, "shards": shards} for i in range(recipes)],
        "cluster": {"accelerator": "cpu"},
    })


def run(spec, until_first_launch: bool = False) -> dict:
    """One driver run; its CPU, wall, requests and time to its first launch."""
    import pipeline.driver as drv

    counting = Counting(drv.open_store(spec.store))
    real_open = drv.open_store
    drv.open_store = lambda uri: counting if uri == spec.store else real_open(uri)
    first: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def log(m: str) -> None:
        if m.startswith("start") and not first:
            first.append(time.perf_counter() - t0)

    try:
        report = drv.Driver(spec, log=log, train_fn=fake_train, eval_fn=fake_eval).run()
    finally:
        drv.open_store = real_open
    assert not report.failed, report.failed
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "requests": counting.requests,
            "first_launch_s": first[0] if first else None, "units": len(report.done)}


def half_done(spec) -> None:
    """Commit half of the campaign's units by hand: trains of every seed, evals of the first half."""
    from pipeline.store import Layout, open_store
    from workers.plan import ensure_plan

    store, layout = open_store(spec.store), Layout(spec.name)
    spec_json = spec.model_dump(mode="json")
    for seed in spec.seeds:
        fake_train(spec_json, seed, spec.store, {}, "bench", "bench")
        for r in spec.evals:
            plan = ensure_plan(store, spec, seed, r, r.shards)
            if seed < len(spec.seeds) // 2:
                for k in range(len(plan["shards"])):
                    fake_eval(spec_json, seed, r.name, spec.store, k, "bench", f"b{seed:05d}{k:04d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--recipes", type=int, default=4)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=16, help="logical GPUs of the local Ray instance")
    ap.add_argument("--s3", action="store_true", help="the store on moto's S3 server on 127.0.0.1 (else a local dir)")
    args = ap.parse_args()

    import ray

    from workers.prepare import prepare, write_stdlib_corpus

    root = Path(tempfile.mkdtemp(prefix="scale-"))
    write_stdlib_corpus(root / "docs.jsonl", limit=300)
    prepare([root / "docs.jsonl"], 512, root / "data")
    base = f"{root}/store"
    if args.s3:
        import boto3
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
        boto3.client("s3").create_bucket(Bucket="scale-bench")
        base = "s3://scale-bench"
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=args.gpus, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")

    def units(seeds: int) -> int:
        return seeds * (1 + args.recipes * args.shards)

    out = {}
    for label, seeds in (("1x", args.seeds), ("2x", 2 * args.seeds)):
        fresh = spec_for(root / "data", f"{base}/fresh-{label}", seeds, args.recipes, args.shards)
        r = run(fresh)
        gpu_s = seeds * (TRAIN_GPU_S + args.recipes * EVAL_GPU_S)
        out[label] = {**r, "overhead": r["cpu_s"] / gpu_s, "n": units(seeds)}
        print(f"{label}: {units(seeds):,} units: first launch {r['first_launch_s']:.1f} s, run {r['wall_s']:.1f} s, "
              f"driver CPU {1e3 * r['cpu_s'] / units(seeds):.2f} ms/unit, {r['requests'] / units(seeds):.1f} store requests/unit, "
              f"overhead {100 * out[label]['overhead']:.3f} % of {gpu_s / 3600:,.0f} GPU-hours", flush=True)
    resumed = spec_for(root / "data", f"{base}/resume", args.seeds, args.recipes, args.shards)
    half_done(resumed)
    r = run(resumed)
    print(f"resume (half DONE): first launch {r['first_launch_s']:.1f} s, ran {r['units']:,} units in {r['wall_s']:.1f} s, "
          f"{r['requests'] / units(args.seeds):.1f} store requests/unit", flush=True)
    ratio = out["2x"]["cpu_s"] / out["1x"]["cpu_s"]
    where = "S3 on loopback" if args.s3 else "local store"
    print(f"scale ({where}): overhead {100 * out['1x']['overhead']:.3f} %, first launch {out['1x']['first_launch_s']:.1f} s, "
          f"resume {r['first_launch_s']:.1f} s, 2x units {ratio:.2f} x")


if __name__ == "__main__":
    main()
