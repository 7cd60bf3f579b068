"""The training loop that runs inside each Ray Train worker.

One process per worker, DDP over the group (NCCL on GPU, gloo on CPU), capped by steps and wall
clock. Rank 0 exports the artifact, then the manifest (the train commit object) last.

Determinism: weights are seeded by the campaign seed, the data order is fixed (shards in order,
each rank its own slice of every global batch), and the stop decision and lr schedule are agreed
across ranks through one all-reduce, so a step-capped run gives the same artifact every time.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.spec import CampaignSpec, TrainRecipe
from pipeline.store import Layout, open_store
from workers.artifact import export_artifact, provenance, sha256
from workers.data import TokenStream
from workers.device import select_device
from workers.model import GPT, count_parameters
from workers.optim import Muon

MANIFEST_VERSION = 1


class ArtifactTooLarge(ValueError):
    pass


@dataclass
class Group:
    """Where this process sits in the worker group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()


class DistributedTokenLoader:
    """Each step takes world × (local_tokens + 1) tokens from the stream; rank r trains on slice r."""

    def __init__(self, shard_dir: str, group: Group, local_tokens: int, seq_len: int):
        self.stream = TokenStream(shard_dir)
        self.group, self.local_tokens, self.seq_len = group, local_tokens, seq_len

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.local_tokens + 1
        chunk = self.stream.take(span * self.group.world)
        local = torch.from_numpy(chunk[self.group.rank * span : (self.group.rank + 1) * span])
        x = local[:-1].reshape(-1, self.seq_len).to(self.group.device, non_blocking=True)
        y = local[1:].reshape(-1, self.seq_len).to(self.group.device, non_blocking=True)
        return x, y


def build_optimizers(model: GPT, recipe: TrainRecipe) -> list[torch.optim.Optimizer]:
    block_named = list(model.blocks.named_parameters())
    matrices = [p for _, p in block_named if p.ndim == 2]
    scalars = [p for _, p in block_named if p.ndim < 2] + [model.skip_weights]
    betas = (recipe.beta1, recipe.beta2)
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([model.tok_emb.weight], lr=recipe.embed_lr, betas=betas, eps=1e-8),
        Muon(matrices, lr=recipe.matrix_lr, momentum=recipe.muon_momentum, backend_steps=recipe.muon_backend_steps),
        torch.optim.Adam(scalars, lr=recipe.scalar_lr, betas=betas, eps=1e-8),
    ]
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def lr_multiplier(step: int, progress: float, recipe: TrainRecipe) -> float:
    """Linear warmup over `warmup_steps`, then flat, then linear decay to 0 over the last
    `warmdown_frac` of the run, where progress is by steps or wall clock, whichever is further."""
    warm = min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    if recipe.warmdown_frac <= 0:
        return warm
    return warm * min(1.0, max(0.0, (1.0 - progress) / recipe.warmdown_frac))


def agreed_progress(step: int, elapsed_s: float, recipe: TrainRecipe, group: Group) -> float:
    """max(step / max_steps, elapsed / cap), the maximum over ranks so every rank takes the same
    lr and the same stop decision."""
    p = max(step / recipe.max_steps, elapsed_s / recipe.max_wallclock_s)
    if group.distributed:
        t = torch.tensor([p], dtype=torch.float64, device=group.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        p = float(t.item())
    return p


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(spec: CampaignSpec, seed: int, store_uri: str, group: Group, context: dict[str, Any]) -> dict[str, Any]:
    """Train one seed on this worker group; rank 0 commits the artifact and manifest to the store."""
    recipe = spec.train
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = GPT(spec.model).to(group.device)
    ddp = DDP(model, device_ids=[group.device.index] if group.device.type == "cuda" else None) if group.distributed else model
    opts = build_optimizers(model, recipe)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()} if recipe.ema else None

    local_tokens = recipe.batch_tokens // (group.world * recipe.grad_accum_steps)
    loader = DistributedTokenLoader(spec.data.shards, group, local_tokens, recipe.seq_len)
    use_bf16 = group.device.type == "cuda"
    log: list[dict[str, float]] = []
    step, t0 = 0, time.perf_counter()
    while True:
        progress = agreed_progress(step, time.perf_counter() - t0, recipe, group)
        if progress >= 1.0:
            break
        mul = lr_multiplier(step, progress, recipe)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mul
        loss_sum = 0.0
        for micro in range(recipe.grad_accum_steps):
            x, y = loader.next_batch()
            last = micro == recipe.grad_accum_steps - 1
            sync = ddp.no_sync() if (group.distributed and not last) else nullcontext()
            with sync, torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = ddp(x, y) / recipe.grad_accum_steps
                loss.backward()
            loss_sum += float(loss.detach())
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(recipe.ema).add_(v.float(), alpha=1 - recipe.ema)
        step += 1
        if group.rank == 0 and (step % recipe.log_every == 0 or step == 1):
            log.append({"step": step, "train_loss": loss_sum, "elapsed_s": time.perf_counter() - t0, "lr_mul": mul})
    wall = time.perf_counter() - t0
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"seed {seed}: training loss is {loss_sum} at step {step}")

    # Every rank must hold the same weights; check it rather than trust it.
    digest = params_digest(model)
    digests = [digest] * group.world
    if group.distributed:
        dist.all_gather_object(digests, digest)
    summary = {"parameters": count_parameters(model), "steps": step, "wall_s": wall, "final_train_loss": loss_sum, "replica_digests": digests}
    if group.rank == 0:
        state = ema if ema is not None else model.state_dict()
        _commit(spec, seed, store_uri, state, summary, log, context)
    if group.distributed:
        dist.barrier()
    return summary


def _commit(spec, seed, store_uri, state, summary, log, context) -> None:
    store, layout = open_store(store_uri), Layout(spec.name)
    blob = export_artifact(state, spec.model)
    limit = spec.train.artifact_limit_bytes
    if len(blob) > limit:
        raise ArtifactTooLarge(
            f"seed {seed}: artifact is {len(blob):,} bytes, above train.artifact_limit_bytes ({limit:,})"
        )
    store.put(layout.artifact(seed), blob)
    store.put_json(layout.train_log(seed), {"version": 1, "log": log})
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "artifact": layout.artifact(seed).rsplit("/", 1)[1],
        "sha256": sha256(blob),
        "bytes": len(blob),
        "config": spec.model.model_dump(mode="json"),
        "train": {**summary, "world_size": spec.train.world_size, "ema": spec.train.ema},
        "provenance": {**provenance(), **context},
    }
    store.put_json(layout.manifest(seed), manifest)  # the commit object, written last


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point given to ray.train.torch.TorchTrainer (one call per worker)."""
    import ray.train

    spec = CampaignSpec.model_validate(config["spec"])
    ctx = ray.train.get_context()
    device = select_device(spec.cluster.accelerator, ctx.get_local_rank(), spec.cluster.cpu_threads)
    group = Group(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), device)
    summary = train(spec, config["seed"], config["store_uri"], group, config.get("context", {}))
    ray.train.report({k: v for k, v in summary.items() if k != "replica_digests"})
