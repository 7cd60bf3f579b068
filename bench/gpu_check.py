"""One check of the GPU path on whatever NVIDIA GPUs this machine has, printed as one table.

    make gpu-check                                   # = .venv/bin/python bench/gpu_check.py --out gpu-check
    .venv/bin/python bench/gpu_check.py --out DIR [--batches N] [--tasks K] [--skip flash,ray,nccl,speed]

Rows: torch / CUDA / flash-attn versions; flash-attn vs SDPA logits on one batch in bf16 (max |diff|);
the GPU each of several `num_gpus=1` Ray eval tasks computed on, with the eval tasks' own options
(reused worker processes, pipeline/run/executor.py EVAL_TASK_ENV) against the GPU Ray assigned; a 2-rank
NCCL training group (pipeline/run/tasks.py fit_group) for a few steps where there are ≥ 2 GPUs; the eval
engine's windows/s (workers/evaluate.py score_batch) for sliding and SLOT-100 at seq 1024, stride 64
on the baseline shape (9×512, vocab 1024) and the records' 32 M shape (11×512, MLP ×4), with the
minutes 969,088 windows take on one GPU. Random weights and tokens: no data set is needed.

Nothing is written outside --out (Ray's session files, Ray Train's storage and temp files go there).
Without a CUDA GPU it exits 1 with one line. About 2–4 min on one H100, most of it Ray start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.dont_write_bytecode = True  # no __pycache__ beside the sources: only --out is written

STANDARD_WINDOWS = 969_088  # legacy filter, seq 1024, stride 64, the standard val set (docs/design.md §5)
SEEDS_MIN_PER_SEED = 50.0  # the seeds' SLOT-100 eval on one H100: the figure to beat
CHECKS = ("flash", "ray", "nccl", "speed")
SHAPES = {  # name → ModelConfig fields
    "baseline 9x512": {"vocab_size": 1024, "num_layers": 9, "model_dim": 512, "num_heads": 8, "num_kv_heads": 4, "mlp_mult": 2},
    "records 11x512 mlp4": {"vocab_size": 1024, "num_layers": 11, "model_dim": 512, "num_heads": 8, "num_kv_heads": 4, "mlp_mult": 4},
}
RECIPES = {
    "sliding": [{"kind": "sliding"}],
    "slot-100": [{"kind": "slot", "lr": 0.1, "lr_min": 0.001, "steps": 100}],
}


@dataclass(frozen=True)
class Row:
    check: str
    result: str
    ok: bool | None = None  # None: a figure or a skip, nothing to pass or fail


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="the only folder written (default ./gpu-check)")
    ap.add_argument("--batches", type=int, default=8, help="batches of 32 windows timed per recipe and shape (default 8)")
    ap.add_argument("--tasks", type=int, default=0, help="Ray eval tasks for the GPU-identity row (default 3 per GPU)")
    ap.add_argument("--skip", default="", help=f"comma-separated checks to leave out: {','.join(CHECKS)}")
    args = ap.parse_args(argv)
    if args.batches < 1:
        ap.error("--batches: must be at least 1")
    if args.tasks < 0:
        ap.error("--tasks: must not be negative")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(CHECKS):
        ap.error(f"--skip: unknown check(s) {', '.join(sorted(args.skip - set(CHECKS)))}; known: {', '.join(CHECKS)}")
    return args


def projected_minutes(windows_per_s: float, windows: int = STANDARD_WINDOWS) -> float:
    return windows / windows_per_s / 60.0


def speed_row(shape: str, recipe: str, windows: int, seconds: float) -> Row:
    rate = windows / seconds
    minutes = projected_minutes(rate)
    vs = f"; the seeds' {SEEDS_MIN_PER_SEED:.0f} min ÷ {SEEDS_MIN_PER_SEED / minutes:.1f}" if recipe.startswith("slot") else ""
    return Row(f"eval {recipe}, {shape}", f"{rate:,.0f} windows/s → {minutes:.1f} min for {STANDARD_WINDOWS:,} windows on one GPU{vs}")


def render(rows: list[Row]) -> str:
    mark = {True: "ok", False: "FAIL", None: ""}
    w = max(len(r.check) for r in rows)
    lines = [f"{'check':<{w}}  {'':4}  result", f"{'-' * w}  ----  {'-' * 40}"]
    lines += [f"{r.check:<{w}}  {mark[r.ok]:<4}  {r.result}" for r in rows]
    return "\n".join(lines)


def no_gpu_reason() -> str | None:
    """One line saying why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError:
        return "gpu_check: torch is not installed (make install)"
    if not torch.cuda.is_available():
        return "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"
    return None


# --- the checks (GPU only) ---------------------------------------------------------------------


def random_model(shape: dict, device):
    """The project's GPT with every weight drawn at random (its zero-init projections would make
    attention contribute nothing, and then flash-attn vs SDPA compares nothing)."""
    import torch

    from pipeline.spec import ModelConfig
    from workers.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(**shape))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.to(device).eval()


def versions() -> list[Row]:
    import ray
    import torch

    try:
        import flash_attn

        fa = flash_attn.__version__
    except ImportError:
        fa = "not installed (SDPA fallback)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpus = ", ".join(f"{names.count(n)}× {n}" for n in dict.fromkeys(names))
    return [
        Row("versions", f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"flash-attn {fa}, Ray {ray.__version__}"),
        Row("GPUs", gpus),
    ]


def check_flash() -> Row:
    import torch

    import workers.model as wm

    if wm._flash_attn_func is None:
        return Row("flash-attn vs SDPA", "flash-attn not installed: the model runs SDPA only")
    dev = torch.device("cuda", 0)
    model = random_model(SHAPES["baseline 9x512"], dev)
    x = torch.randint(0, 1024, (4, 1024), device=dev, generator=torch.Generator(dev).manual_seed(0))
    flash = wm._flash_attn_func

    def logits():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model.compute_logits(model.forward_hidden(x)).float()

    a = logits()
    wm._flash_attn_func = None  # the SDPA branch of the same model on the same batch
    try:
        b = logits()
    finally:
        wm._flash_attn_func = flash
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    # bf16 keeps 8 bits of mantissa: two kernels may round each of 9 layers differently
    return Row("flash-attn vs SDPA logits (bf16)", f"max |diff| {diff:.3g} (logits up to {scale:.3g}), 4×1024 tokens", diff <= 0.05 * scale)


def check_ray_gpus(n_gpus: int, tasks: int, out: Path) -> Row:
    import ray
    import torch

    from pipeline.run.executor import EVAL_TASK_ENV

    # Ray's GPU ids are the node's CUDA_VISIBLE_DEVICES entries (or 0..n-1): what each one is, seen from here
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()] or [str(i) for i in range(n_gpus)]
    truth = {gid: str(torch.cuda.get_device_properties(i).uuid) for i, gid in enumerate(visible[:n_gpus])}

    @ray.remote(max_retries=0, max_calls=0, runtime_env={"env_vars": EVAL_TASK_ENV})  # the eval tasks' options
    def where() -> dict:
        import torch

        from workers.device import cuda_index

        gid = [str(g) for g in ray.get_gpu_ids()]
        dev = torch.device("cuda", cuda_index(gid, os.environ.get("CUDA_VISIBLE_DEVICES")))
        torch.cuda.set_device(dev)
        y = torch.randn(2048, 2048, device=dev) @ torch.randn(2048, 2048, device=dev)
        torch.cuda.synchronize(dev)
        return {"assigned": gid[0], "computed_on": str(torch.cuda.get_device_properties(y.device).uuid), "pid": os.getpid()}

    seen: list[dict] = []
    while len(seen) < tasks:  # waves of one task per GPU, so later waves reuse the first wave's processes
        seen += ray.get([where.options(num_gpus=1).remote() for _ in range(min(n_gpus, tasks - len(seen)))])
    wrong = [s for s in seen if truth.get(s["assigned"]) != s["computed_on"]]
    pids = len({s["pid"] for s in seen})
    text = f"{len(seen)} tasks on {n_gpus} GPU(s) in {pids} worker process(es): "
    text += "each computed on the GPU Ray assigned" if not wrong else f"{len(wrong)} computed elsewhere: {wrong[:3]}"
    return Row("eval tasks' GPU (reused workers)", text, not wrong and pids < len(seen))


def _nccl_loop(config: dict) -> None:
    """One rank: a few DDP steps of a small GPT on its own random tokens, then every rank's weights digest."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from workers.group import weights_digest

    dev = ray.train.torch.get_device()
    torch.cuda.set_device(dev)
    rank = ray.train.get_context().get_world_rank()
    model = torch.nn.parallel.DistributedDataParallel(random_model(SHAPES["baseline 9x512"], dev).train(), device_ids=[dev.index])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator(dev).manual_seed(rank)
    x = torch.randint(0, 1024, (4, 257), device=dev, generator=gen)
    losses = []
    for _ in range(config["steps"]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / dist.get_world_size())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, weights_digest(model.module.state_dict().items()))
    if rank == 0:
        Path(config["out"]).write_text(json.dumps({"backend": dist.get_backend(), "losses": losses, "digests": digests}))


def check_nccl(n_gpus: int, out: Path, steps: int = 5) -> Row:
    if n_gpus < 2:
        return Row("NCCL 2-rank training group", "skipped: one GPU")
    from pipeline.store import open_store
    from pipeline.run.tasks import fit_group

    result = out / "nccl.json"
    config = {"attempt": "gpu-check", "out": str(result), "steps": steps}
    fit_group("gpu-check-nccl", _nccl_loop, config, 2, 1, "cuda", open_store(str(out / "store")), "gpu-check/error.json")
    r = json.loads(result.read_text())
    same = len(set(r["digests"])) == 1
    text = f"backend {r['backend']}, {steps} steps, mean loss {r['losses'][0]:.3f} → {r['losses'][-1]:.3f}, weights equal on both ranks: {'yes' if same else 'NO'}"
    return Row("NCCL 2-rank training group", text, same and r["backend"] == "nccl" and r["losses"][-1] < r["losses"][0])


def eval_context(shape: dict, passes: list, batches: int, device):
    """The eval engine's context over random val tokens, every token worth one byte."""
    import numpy as np

    from pipeline.spec import EvalRecipe
    from workers.evaluate import EvalContext
    from workers.plan import recipe_batches

    recipe = EvalRecipe.model_validate({"name": "check", "seq_len": 1024, "stride": 64, "batch_seqs": 32, "window_filter": "legacy", "passes": passes})
    vocab = shape["vocab_size"]
    val = np.random.default_rng(0).integers(0, vocab, size=32 * 64 * (batches + 1) + 1024 + 1, dtype=np.int64)
    windows, bounds = recipe_batches(val.size, recipe)
    tables = (np.ones(vocab, np.int16), np.zeros(vocab, np.bool_), np.zeros(vocab, np.bool_))
    return EvalContext(random_model(shape, device), val, tables, windows, bounds, recipe, device, "random", {"format": "random", "architecture": "GPT"})


def check_speed(batches: int) -> list[Row]:
    import torch

    from pipeline.spec import ModelConfig
    from workers.evaluate import score_batch
    from workers.model import GPT, count_parameters

    dev = torch.device("cuda", 0)
    rows = []
    for shape_name, shape in SHAPES.items():
        label = f"{shape_name} ({count_parameters(GPT(ModelConfig(**shape))) / 1e6:.1f} M)"
        for recipe, passes in RECIPES.items():
            ctx = eval_context(shape, passes, batches, dev)
            score_batch(ctx, 0)  # warm-up: allocations, kernel choice
            torch.cuda.synchronize(dev)
            t = time.perf_counter()
            for b in range(1, batches + 1):
                score_batch(ctx, b)
            torch.cuda.synchronize(dev)
            rows.append(speed_row(label, recipe, int(ctx.bounds[batches + 1] - ctx.bounds[1]), time.perf_counter() - t))
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    import torch

    out = args.out.resolve()
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(out / "tmp")  # Ray Train's storage (pipeline/run/tasks.py) and any temp file land here
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    import tempfile

    tempfile.tempdir = None  # re-read TMPDIR
    n_gpus = torch.cuda.device_count()
    rows = versions()
    if "flash" not in args.skip:
        rows.append(check_flash())
    if "speed" not in args.skip:
        rows += check_speed(args.batches)
    if {"ray", "nccl"} - args.skip:
        import ray

        ray.init(num_gpus=n_gpus, include_dashboard=False, _temp_dir=str(out / "ray"),
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(out / "tmp")}})
        try:
            if "ray" not in args.skip:
                rows.append(check_ray_gpus(n_gpus, args.tasks or 3 * n_gpus, out))
            if "nccl" not in args.skip:
                rows.append(check_nccl(n_gpus, out))
        finally:
            ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = no_gpu_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    t = time.perf_counter()
    rows = run(args)
    rows.append(Row("wall time", f"{time.perf_counter() - t:.0f} s"))
    table = render(rows)
    print(table)
    (args.out / "gpu_check.txt").write_text(table + "\n")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
