"""Eval engine vs the straightforward reference (full-window logits, masked), same model, same data.

    .venv/bin/python bench/eval_bench.py            # CPU: sliding and SLOT-20, ratio from one run
    .venv/bin/python bench/eval_bench.py --gpu      # + the production shape on a GPU (if present)

Prints windows/s for ours and the reference, the ratio, their nll agreement, and the share of eval
time spent writing progress segments (at checkpoint_every_s = 60 s and, worst case, every batch).
On a GPU it also runs ~32 M parameters, seq 1024, stride 64, SLOT-100, and projects minutes per seed
for the 969,088 windows of the standard val set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.spec import parse_spec  # noqa: E402
from pipeline.store import Layout, open_store  # noqa: E402
from tests.workers.helpers import commit_random_model  # noqa: E402
from tests.workers.reference import reference_batch  # noqa: E402
from workers.evaluate import execute, prepare_context, score_batch  # noqa: E402
from workers.plan import ensure_plan  # noqa: E402
from workers.prepare import prepare, write_stdlib_corpus  # noqa: E402

STANDARD_WINDOWS = 969_088  # legacy filter, stride 64, standard val set


def make_data(root: Path, vocab: int, docs: int = 1500) -> Path:
    """Tokenizer and shards from this Python's standard-library docstrings (no download)."""
    write_stdlib_corpus(root / "docs.jsonl", limit=docs)
    prepare([root / "docs.jsonl"], vocab, root / "data")
    return root / "data"


def make_spec(data: Path, store: Path, model: dict, passes: list, val_tokens: int, accelerator: str):
    return parse_spec(
        {
            "name": "bench",
            "store": str(store),
            "seeds": [1],
            "data": {"shards": str(data), "tokenizer": str(data / "tokenizer.model"), "val_tokens": val_tokens},
            "model": model,
            "train": {"world_size": 1, "batch_tokens": 1024, "seq_len": 1024},
            "evals": [{"name": "e", "seq_len": 1024, "stride": 64, "batch_seqs": 32, "window_filter": "legacy", "passes": passes}],
            "cluster": {"accelerator": accelerator, "cpu_threads": torch.get_num_threads()},
        }
    )


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_batches(fn, ctx, batches) -> tuple[float, float]:
    sync(ctx.device)
    t = time.perf_counter()
    nll = sum(fn(ctx, b).nll for b in batches)
    sync(ctx.device)
    return time.perf_counter() - t, nll


def compare(label: str, spec, batches: int, with_reference: bool = True) -> dict:
    store = open_store(spec.store)
    commit_random_model(spec, 1)
    dev = torch.device("cuda" if spec.cluster.accelerator == "cuda" else "cpu")
    ctx = prepare_context(spec, 1, spec.evals[0], store, dev)
    todo = list(range(min(batches, ctx.num_batches)))
    windows = int(ctx.bounds[len(todo)])
    score_batch(ctx, 0)  # warm-up (allocations, kernels)
    ours_s, ours_nll = time_batches(score_batch, ctx, todo)
    row = {"label": label, "windows": windows, "ours_windows_per_s": windows / ours_s}
    if with_reference:
        ref_s, ref_nll = time_batches(reference_batch, ctx, todo)
        row.update(
            ref_windows_per_s=windows / ref_s,
            speedup=ref_s / ours_s,
            nll_rel_diff=abs(ours_nll - ref_nll) / abs(ref_nll),
        )
    return row


def checkpoint_overhead(spec) -> dict:
    """Share of a whole eval unit's time spent writing segments, at 60 s and at every batch."""
    out = {}
    for every in (60.0, 1e-9):
        s = spec.model_copy(update={"store": tempfile.mkdtemp(), "checkpoint_every_s": every})
        commit_random_model(s, 1)
        store = open_store(s.store)
        ctx = prepare_context(s, 1, s.evals[0], store, torch.device("cpu"))
        done = execute(ctx, store, Layout(s.name), 1, 0, every, ensure_plan(store, s, 1, s.evals[0], 1))
        out[f"every_{every:g}s"] = {
            "flush_share": done["run"]["flush_s"] / done["run"]["wall_s"],
            "segments": len([k for k in store.list() if "/seg-" in k]),
            "batches": done["batches"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2, help="batches of 32 windows timed per variant (CPU)")
    ap.add_argument("--gpu", action="store_true", help="also run the production shape on CUDA")
    args = ap.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    data = make_data(root, vocab=1024)
    tiny = {"vocab_size": 1024, "num_layers": 2, "model_dim": 128, "num_heads": 4, "num_kv_heads": 2}
    val_tokens = 32 * 64 * args.batches + 1024
    rows = []
    for label, passes in (
        ("sliding", [{"kind": "sliding"}]),
        ("slot-20", [{"kind": "slot", "lr": 0.1, "lr_min": 0.001, "steps": 20}]),
    ):
        spec = make_spec(data, root / label, tiny, passes, val_tokens, "cpu")
        rows.append(compare(f"cpu {label}", spec, args.batches))
    for r in rows:
        print(
            f"{r['label']:<12} ours {r['ours_windows_per_s']:9.1f} windows/s   reference {r['ref_windows_per_s']:8.1f} windows/s"
            f"   speedup ×{r['speedup']:.1f}   nll rel diff {r['nll_rel_diff']:.1e}   ({r['windows']} windows, seq 1024, stride 64, {torch.get_num_threads()} threads)"
        )
    slot_spec = make_spec(data, root / "ckpt", tiny, [{"kind": "slot", "steps": 20}], 32 * 64 * 8 + 1024, "cpu")
    for k, v in checkpoint_overhead(slot_spec).items():
        print(f"checkpoint overhead ({k}): {100 * v['flush_share']:.2f}% of eval time, {v['segments']} segments for {v['batches']} batches")

    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu: no CUDA device here, production shape skipped")
            return
        prod = {"vocab_size": 1024, "num_layers": 11, "model_dim": 512, "num_heads": 8, "num_kv_heads": 4, "mlp_mult": 4}
        spec = make_spec(data, root / "gpu", prod, [{"kind": "slot", "lr": 0.1, "lr_min": 0.001, "steps": 100}], 32 * 64 * 16 + 1024, "cuda")
        r = compare("cuda slot-100", spec, 16, with_reference=False)
        minutes = STANDARD_WINDOWS / r["ours_windows_per_s"] / 60
        from workers.model import GPT, count_parameters

        n = count_parameters(GPT(spec.model))
        print(
            f"cuda slot-100 {torch.cuda.get_device_name()}: {n / 1e6:.1f} M params, {r['ours_windows_per_s']:.1f} windows/s"
            f" → {minutes:.1f} min per seed for {STANDARD_WINDOWS:,} windows on one GPU"
        )


if __name__ == "__main__":
    main()
