"""How the driver scales with the number of units: seeds × recipes × shards of fake units.

    .venv/bin/python bench/scale_bench.py [--seeds 100] [--recipes 4] [--shards 64] [--gpus 16] [--s3] [--threads]

The real driver, scheduler, plans, store, ledger and merge run; each unit's work is replaced by a
fake that commits what the real unit would (bench/fake_units.py) and returns at once, so what is
measured is the driver. By default the fakes run as Ray tasks on a local Ray instance (the driver's
Ray calls are part of its cost); `--threads` runs them in this process (pipeline.run.executor
ThreadExecutor) and subtracts their CPU. `--s3` puts the store on moto's S3 server on 127.0.0.1,
in its own process so its CPU is not counted as the driver's (a fresh one per run). Prints, measured in one run:

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
import functools
import gc
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"  # for Ray's workers

TRAIN_GPU_S = 600 * 8  # 10 minutes on 8 GPUs
EVAL_GPU_S = 50 * 60  # SLOT-100: 50 GPU-minutes per seed and recipe


class FakeCPU:
    """Fakes that run in this process (--threads), and the CPU they took (not the driver's)."""

    def __init__(self):
        self.cpu_s, self._lock = 0.0, threading.Lock()

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*a):
            t = time.thread_time()
            try:
                return fn(*a)
            finally:
                with self._lock:
                    self.cpu_s += time.thread_time() - t

        return timed


class GCTime:
    """Seconds the garbage collector took while inside (every generation, every thread)."""

    def __init__(self):
        self.total, self._t = 0.0, 0.0

    def _cb(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t

    def __enter__(self):
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._cb)


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


def run(spec, gpus: int, threads: bool) -> dict:
    """One driver run; its CPU, wall, requests and time to its first launch."""
    import pipeline.run.driver as drv
    from bench.fake_units import CountingStore, fake_eval, fake_train
    from pipeline.run.executor import ThreadExecutor

    counting = CountingStore(drv.open_store(spec.store))
    real_open = drv.open_store
    drv.open_store = lambda uri: counting if uri == spec.store else real_open(uri)
    fakes, gc_s = FakeCPU(), GCTime()
    first: list[float] = []
    t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()

    def log(m: str) -> None:
        if m.startswith("start") and not first:
            first.append(time.perf_counter() - t0)

    kw = {"train_fn": fake_train, "eval_fn": fake_eval}
    if threads:
        kw = {"train_fn": fakes.wrap(fake_train), "eval_fn": fakes.wrap(fake_eval), "executor": lambda fns: ThreadExecutor(fns, gpus)}
    try:
        with gc_s:
            report = drv.Driver(spec, log=log, **kw).run()
    finally:
        drv.open_store = real_open
    assert not report.failed, report.failed
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0 - fakes.cpu_s, "requests": counting.requests,
            "first_launch_s": first[0] if first else None, "units": len(report.done),
            "loop_cpu_s": time.thread_time() - m0, "gc_s": gc_s.total}


def half_done(spec) -> None:
    """Commit half of the campaign's units by hand: trains of every seed, evals of the first half."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.fake_units import fake_eval, fake_train
    from pipeline.store import open_store
    from workers.plan import ensure_plan

    store = open_store(spec.store)
    spec_json = spec.model_dump(mode="json")

    def seed_done(seed: int) -> None:
        fake_train(spec_json, seed, spec.store, {}, "bench", "bench")
        for r in spec.evals:
            plan = ensure_plan(store, spec, seed, r, r.shards)
            if seed < len(spec.seeds) // 2:
                for k in range(len(plan["shards"])):
                    fake_eval(spec_json, seed, r.name, spec.store, k, "bench", f"b{seed:05d}{k:04d}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(seed_done, spec.seeds))


def s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1 in a process of its own, and its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--recipes", type=int, default=4)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=16, help="logical GPUs of the cluster")
    ap.add_argument("--s3", action="store_true", help="the store on moto's S3 server on 127.0.0.1 (else a local dir)")
    ap.add_argument("--threads", action="store_true", help="fakes in this process, no Ray (the driver alone)")
    args = ap.parse_args()

    from workers.prepare import prepare, write_stdlib_corpus

    root = Path(tempfile.mkdtemp(prefix="scale-"))
    write_stdlib_corpus(root / "docs.jsonl", limit=300)
    prepare([root / "docs.jsonl"], 512, root / "data")
    server = None

    def store(name: str) -> str:
        """On S3 a fresh server per run: moto lists a prefix by walking its whole bucket and keeps
        every object in its process (S3 does neither), so one run's objects would slow the next."""
        nonlocal server
        if not args.s3:
            return f"{root}/store/{name}"
        import boto3

        if server is not None:
            server.terminate()
            server.wait()
        server, endpoint = s3_server()
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
        boto3.client("s3").create_bucket(Bucket=f"scale-{name}")
        return f"s3://scale-{name}"
    if not args.threads:
        import ray

        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=args.gpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")

    def units(seeds: int) -> int:
        return seeds * (1 + args.recipes * args.shards)

    try:
        out = {}
        for label, seeds in (("1x", args.seeds), ("2x", 2 * args.seeds)):
            fresh = spec_for(root / "data", store(f"fresh-{label}"), seeds, args.recipes, args.shards)
            r = run(fresh, args.gpus, args.threads)
            gpu_s = seeds * (TRAIN_GPU_S + args.recipes * EVAL_GPU_S)
            out[label] = {**r, "overhead": r["cpu_s"] / gpu_s, "n": units(seeds)}
            print(f"{label}: {units(seeds):,} units: first launch {r['first_launch_s']:.1f} s, run {r['wall_s']:.1f} s, "
                  f"driver CPU {1e3 * r['cpu_s'] / units(seeds):.2f} ms/unit, {r['requests'] / units(seeds):.2f} store requests/unit, "
                  f"overhead {100 * out[label]['overhead']:.3f} % of {gpu_s / 3600:,.0f} GPU-hours "
                  f"(loop thread {1e3 * r['loop_cpu_s'] / units(seeds):.2f} ms/unit, GC {r['gc_s']:.1f} s)", flush=True)
        resumed = spec_for(root / "data", store("resume"), args.seeds, args.recipes, args.shards)
        half_done(resumed)
        r = run(resumed, args.gpus, args.threads)
        print(f"resume (half DONE): first launch {r['first_launch_s']:.1f} s, ran {r['units']:,} units in {r['wall_s']:.1f} s, "
              f"{r['requests'] / units(args.seeds):.2f} store requests/unit", flush=True)
        ratio = out["2x"]["cpu_s"] / out["1x"]["cpu_s"]
        where = ("S3 on loopback" if args.s3 else "local store") + (", threads" if args.threads else ", Ray")
        print(f"({where}, {args.gpus} GPUs, {os.cpu_count()} cores)")
        print(f"scale: overhead {100 * out['1x']['overhead']:.3f} %, first launch {out['1x']['first_launch_s']:.1f} s, "
              f"resume {r['first_launch_s']:.1f} s, 2x units {ratio:.2f} x")
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
