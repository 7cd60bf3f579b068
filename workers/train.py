"""The training loop that runs inside each Ray Train worker.

One process per worker, DDP over the group (NCCL on GPU, gloo on CPU), capped by steps and wall
clock. Rank 0 exports the artifact, then the manifest (the train commit object) last.

Determinism: weights are seeded by the campaign seed, the data order is fixed (shards in order,
each rank its own slice of every global batch), and the stop decision and lr schedule are agreed
across ranks through one all-reduce, so a step-capped run gives the same artifact every time.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.spec import CampaignSpec, TrainRecipe
from pipeline.store import Layout, open_store
from workers.artifact import export_artifact, sha256
from workers.provenance import attempt_provenance
from workers.checkpoint import prune_checkpoints, restore_checkpoint, save_checkpoint
from workers.data import TokenStream
from workers.group import APP_ERRORS, Group, record_error, weights_digest
from workers.model import GPT, count_parameters
from workers.optim import Muon

MANIFEST_VERSION = 1


class ArtifactTooLarge(ValueError):
    pass



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


def agreed(progress: float, checkpoint: bool, group: Group) -> tuple[float, bool]:
    """The maximum over ranks of (progress, wants a checkpoint), in one all-reduce, so every rank
    takes the same lr, the same stop decision and checkpoints at the same step."""
    if not group.distributed:
        return progress, checkpoint
    t = torch.tensor([progress, float(checkpoint)], dtype=torch.float64, device=group.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), bool(t[1] > 0)


def train(
    spec: CampaignSpec, seed: int, store_uri: str, group: Group, context: dict[str, Any], attempt: str
) -> dict[str, Any]:
    """Train one seed on this worker group, resuming from the store's newest checkpoint if there is
    one; rank 0 commits the artifact and manifest to the store. `attempt` names this group's objects."""
    recipe = spec.train
    store, layout = open_store(store_uri), Layout(spec.name)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = GPT(spec.model).to(group.device)
    ddp = DDP(model, device_ids=[group.device.index] if group.device.type == "cuda" else None) if group.distributed else model
    opts = build_optimizers(model, recipe)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()} if recipe.ema else None

    local_tokens = recipe.batch_tokens // (group.world * recipe.grad_accum_steps)
    loader = DistributedTokenLoader(spec.data.shards, group, local_tokens, recipe.seq_len)
    step, log, loss_sum, resumes = 0, [], float("nan"), []
    first_start = time.time()
    meta = restore_checkpoint(store, layout, seed, group, model, opts, ema)
    if meta is not None:  # a restart: same weights, optimizer, data position and clock as at the checkpoint
        step, log, loss_sum = meta["step"], meta["log"], meta["last_loss"]
        first_start, resumes = meta["first_start"], meta["resumes"] + [step]
        loader.stream.skip(step * recipe.grad_accum_steps * group.world * (local_tokens + 1))
    t0 = time.perf_counter() - (meta["elapsed_s"] if meta else 0.0)
    last_ckpt = time.monotonic()
    while True:
        every = recipe.checkpoint_every_steps
        want = step > 0 and (
            time.monotonic() - last_ckpt >= spec.checkpoint_every_s or bool(every and step % every == 0)
        )
        progress, want = agreed(max(step / recipe.max_steps, (time.perf_counter() - t0) / recipe.max_wallclock_s), want, group)
        if want and (meta is None or step > meta["step"]):
            ckpt_meta = {"elapsed_s": time.perf_counter() - t0, "first_start": first_start, "resumes": resumes,
                         "log": log, "last_loss": loss_sum, "node": _node_id()}
            save_checkpoint(store, layout, seed, group, step, model, opts, ema, ckpt_meta, attempt, recipe.keep_checkpoints)
            last_ckpt = time.monotonic()
        if progress >= 1.0:
            break
        mul = lr_multiplier(step, progress, recipe)
        loss_sum = _step(ddp, model, opts, ema, loader, recipe, group, mul)
        step += 1
        if group.rank == 0 and (step % recipe.log_every == 0 or step == 1):
            log.append({"step": step, "train_loss": loss_sum, "elapsed_s": time.perf_counter() - t0, "lr_mul": mul})
    wall = time.perf_counter() - t0
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"seed {seed}: training loss is {loss_sum} at step {step}")

    # Every rank must hold the same weights; check it rather than trust it.
    digest = weights_digest(sorted(model.state_dict().items()))
    digests = group.all_gather(digest)
    summary = {
        "parameters": count_parameters(model),
        "steps": step,
        "wall_s": wall,  # the training clock the schedule saw (excludes time lost to restarts)
        "wall_s_total": time.time() - first_start,  # from the first attempt's start, restarts included
        "resumed": bool(resumes),
        "resumed_at_steps": resumes,
        "final_train_loss": loss_sum,
        "replica_digests": digests,
    }
    error = None
    if group.rank == 0:
        try:
            _commit(spec, seed, store_uri, ema if ema is not None else model.state_dict(), summary, log, context, attempt)
        except APP_ERRORS as e:
            error = e  # raised after the barrier, so the other ranks are not left waiting in it
    if group.distributed:
        dist.barrier()
    if error is not None:
        raise error
    return summary


def _step(ddp, model, opts, ema, loader, recipe, group: Group, mul: float) -> float:
    """One optimizer step at lr × `mul` over grad_accum_steps micro-batches (bf16 autocast on
    CUDA), then the EMA update; returns the step's loss."""
    for opt in opts:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mul
    loss_sum = 0.0
    for micro in range(recipe.grad_accum_steps):
        x, y = loader.next_batch()
        last = micro == recipe.grad_accum_steps - 1
        sync = ddp.no_sync() if (group.distributed and not last) else nullcontext()
        with sync, torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=group.device.type == "cuda"):
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
    return loss_sum


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - provenance only
        return None


def _commit(spec, seed, store_uri, state, summary, log, context, attempt) -> None:
    """Artifact and log under this attempt's names, then the manifest create-only: if another
    attempt of the seed committed first, its artifact stands and ours is dropped."""
    store, layout = open_store(store_uri), Layout(spec.name)
    blob = export_artifact(state, spec.model)
    limit = spec.train.artifact_limit_bytes
    if len(blob) > limit:
        raise ArtifactTooLarge(
            f"seed {seed}: artifact is {len(blob):,} bytes, above train.artifact_limit_bytes ({limit:,})"
        )
    store.put_new(layout.artifact(seed, attempt), blob)
    store.put_new_json(layout.train_log(seed, attempt), {"version": 1, "log": log})
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "attempt": attempt,
        "artifact": layout.artifact(seed, attempt).rsplit("/", 1)[1],
        "metrics": layout.train_log(seed, attempt).rsplit("/", 1)[1],
        "sha256": sha256(blob),
        "bytes": len(blob),
        "config": spec.model.model_dump(mode="json"),
        "train": {**summary, "world_size": spec.train.world_size, "ema": spec.train.ema},
        "provenance": {**attempt_provenance(store, layout, attempt), **context},
    }
    if store.put_new_json(layout.manifest(seed), manifest):  # the commit object, written last
        prune_checkpoints(store, layout, seed, spec.train.keep_checkpoints)
    else:
        store.delete(layout.artifact(seed, attempt))
        store.delete(layout.train_log(seed, attempt))


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point given to ray.train.torch.TorchTrainer (one call per worker)."""
    import ray.train

    spec = CampaignSpec.model_validate(config["spec"])
    group = Group.of_ray_train(spec.cluster)
    attempt = config["attempt"]
    try:
        summary = train(spec, config["seed"], config["store_uri"], group, config.get("context", {}), attempt)
    except APP_ERRORS as e:
        # A real error of the run (bad input, artifact too large): recorded for the launcher, which
        # marks the unit FAILED without retrying; raised so Ray Train ends the group now instead of
        # leaving the other ranks waiting in a collective until NCCL's timeout.
        record_error(open_store(config["store_uri"]), Layout(spec.name).train_error(config["seed"], attempt), group.rank, e)
        raise
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float, bool))})
