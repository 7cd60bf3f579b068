"""TTT on k GPUs vs on one: the same TTT-then-SLOT eval, same model and data, as a k-rank
data-parallel group and as a single process.

    .venv/bin/python bench/ttt_gpus_bench.py                 # CPU: k = 2 processes × 1 thread vs 1 × 1
    .venv/bin/python bench/ttt_gpus_bench.py --accelerator cuda --gpus 8   # a multi-GPU box

A "GPU" on CPU is one process with one torch thread, so k = 2 needs 2 cores. Prints the eval time
of each (rank 0's time in the unit: scoring, TTT steps, all-reduces; process start excluded, it is
paid once per unit), the speedup, and how far the k-rank number is from the 1-rank one (float
rounding only: the gradient sum runs in another order).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from eval_bench import make_data, make_spec  # noqa: E402
from pipeline.store import Layout, open_store  # noqa: E402
from tests.workers.helpers import commit_random_model  # noqa: E402
from workers.evaluate import run_eval  # noqa: E402


def run(data: Path, root: Path, gpus: int, args) -> dict:
    ttt = {"kind": "ttt", "chunk_tokens": args.chunk_tokens, "epochs": args.epochs, "lr": 0.002, "batch_seqs": 8, "gpus": gpus}
    tiny = {"vocab_size": 1024, "num_layers": 2, "model_dim": 128, "num_heads": 4, "num_kv_heads": 2}
    spec = make_spec(data, root / f"k{gpus}", tiny, [ttt, {"kind": "slot", "steps": args.slot_steps}], args.val_tokens, args.accelerator)
    spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"cpu_threads": 1}), "checkpoint_every_s": 60.0})
    commit_random_model(spec, 1)
    t = time.perf_counter()
    result = run_eval(spec, 1, "e", spec.store)
    total = time.perf_counter() - t
    done = open_store(spec.store).get_json(Layout(spec.name).shard_done(1, "e", 0))
    return {**result, "eval_s": done["run"]["wall_s"], "ttt_s": done["run"]["ttt_s"], "total_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--val-tokens", type=int, default=32 * 1024 + 1)
    ap.add_argument("--chunk-tokens", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--slot-steps", type=int, default=8)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ttt-gpus-bench-"))
    data = make_data(root, vocab=1024)
    one, many = run(data, root, 1, args), run(data, root, args.gpus, args)
    for label, r in (("1 rank", one), (f"{args.gpus} ranks", many)):
        print(
            f"{label:<9} eval {r['eval_s']:7.1f} s (ttt steps {r['ttt_s']:6.1f} s)  wall incl. starting the ranks {r['total_s']:7.1f} s"
            f"  val_bpb {r['val_bpb']:.10f}"
        )
    rel = abs(many["nll_sum"] - one["nll_sum"]) / abs(one["nll_sum"])
    print(
        f"speedup ×{one['eval_s'] / many['eval_s']:.2f} (eval), ×{one['total_s'] / many['total_s']:.2f} (wall)  |  "
        f"nll rel diff {rel:.1e}  ({one['windows']} windows, seq 1024, stride 64, chunks of {args.chunk_tokens}, "
        f"TTT {args.epochs} epoch(s) then SLOT-{args.slot_steps}, {args.accelerator})"
    )


if __name__ == "__main__":
    main()
