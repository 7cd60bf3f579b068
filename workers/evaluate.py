"""Eval engine: load a seed's artifact, score its val windows batch by batch, checkpoint progress.

Speed comes from (docs/design.md §5): one hidden-state forward per batch, logits only at the scored
positions (a window of 1024 scoring its last 64 needs 1/16 of the logits), bf16 autocast on GPU,
and index arithmetic in numpy rather than a Python loop per window.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pipeline.spec import CampaignSpec, EvalRecipe
from pipeline.store import Layout, Store, new_attempt_id, open_store
from workers.adapters import EvalModel, load_eval_model
from workers.artifact import sha256
from workers.group import Group, spawn
from workers.data import check_eval_inputs, load_val_tokens, target_bytes, unigram_bpb
from workers.provenance import attempt_provenance
from workers.plan import ensure_plan, recipe_batches, val_length
from workers.scoring import score_sliding
from workers.slot import score_slot, score_slot_per_sample
from workers.result import RESULT_VERSION, merge_result
from workers.segments import Record, SegmentWriter, load_progress, merge
from workers.tokenizer import byte_tables, load_sp
from workers.ttt import ChunkTrainer, num_chunks, restore_latest, save_state
from workers.windows import Windows, batch_index, chunk_of_windows

SCORERS = {"sliding": score_sliding, "slot": score_slot, "slot_per_sample": score_slot_per_sample}


@dataclass
class EvalContext:
    """Everything one eval unit needs, loaded once."""

    model: torch.nn.Module
    val: np.ndarray
    tables: tuple[np.ndarray, np.ndarray, np.ndarray]
    windows: Windows
    bounds: np.ndarray  # batch b = windows [bounds[b], bounds[b + 1])
    recipe: EvalRecipe
    device: torch.device
    artifact_sha256: str
    model_info: dict[str, str]  # the artifact's format and where the architecture came from

    @property
    def num_batches(self) -> int:
        return int(self.bounds.size - 1)


def load_model(spec: CampaignSpec, store: Store, seed: int, device: torch.device) -> tuple[EvalModel, str]:
    layout = Layout(spec.name)
    manifest = store.get_json(layout.manifest(seed))
    # the artifact the manifest committed (attempts that lost the commit race left others beside it)
    key = f"{layout.train_dir(seed)}/{manifest.get('artifact', 'model.int8.ptz')}"
    blob = store.get(key)
    if sha256(blob) != manifest["sha256"]:
        raise ValueError(f"{store.uri}/{key}: sha256 does not match its manifest")
    em = load_eval_model(blob, key, manifest["sha256"], spec)
    em.model.to(device)
    return em, manifest["sha256"]


def prepare_context(spec: CampaignSpec, seed: int, recipe: EvalRecipe, store: Store, device: torch.device) -> EvalContext:
    em, digest = load_model(spec, store, seed, device)
    vocab = em.vocab_size
    check_eval_inputs(spec, vocab, f"seed {seed}'s model vocab_size")
    val = load_val_tokens(spec.data.shards, spec.data.val_tokens)
    val = val[: val_length(val.size, recipe)]
    tables = byte_tables(load_sp(spec.data.tokenizer), vocab)
    if int(val.max()) >= vocab:
        raise ValueError(f"{spec.data.shards}: val token id {int(val.max())} >= model vocab_size {vocab}")
    windows, bounds = recipe_batches(val.size, recipe)
    info = {"format": em.artifact_format, "architecture": em.architecture}
    return EvalContext(em.model, val, tables, windows, bounds, recipe, device, digest, info)


def score_batch(ctx: EvalContext, batch: int) -> Record:
    """One batch: hidden states once (no grad), then the recipe's scoring pass on them."""
    lo, hi = int(ctx.bounds[batch]), int(ctx.bounds[batch + 1])
    scorer = ctx.recipe.scorer
    # PR #1176's loss over the padded batch needs the padding the record had: [B, seq_len]
    padded = scorer.kind == "slot" and scorer.loss_positions == "padded"
    bi = batch_index(ctx.val, ctx.windows, lo, hi, width=ctx.recipe.seq_len if padded else None)
    dev = ctx.device
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        h = ctx.model.forward_hidden(torch.from_numpy(bi.x).to(dev))
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        nll = SCORERS[scorer.kind](ctx.model, h, bi, scorer, dev)
    n_bytes = int(target_bytes(bi.prev, bi.targets, *ctx.tables).sum())
    return Record(batch, float(nll.double().sum()), int(bi.targets.size), n_bytes)


@dataclass
class EvalStats:
    resumed_batches: int = 0
    scored_batches: int = 0
    score_s: float = 0.0
    ttt_s: float = 0.0
    flush_s: float = 0.0
    resumed_chunk: int = 0


def _score(ctx, batches, records, writer: SegmentWriter | None, stats, group: Group) -> None:
    """The unrecorded batches, in order, dealt round by round to the group's ranks (a round is one
    batch in a group of one); each round's records are shared, so every rank ends holding all of
    them and rank 0 writes them."""
    missing = [b for b in batches if b not in records]
    for j in range(0, len(missing), group.world):
        mine = missing[j : j + group.world]
        rec = None
        if group.rank < len(mine):
            t = time.perf_counter()
            rec = score_batch(ctx, mine[group.rank])
            stats.score_s += time.perf_counter() - t
            stats.scored_batches += 1
        for r in group.all_gather(rec):
            if r is not None:
                records[r.batch] = r
                if writer is not None:
                    writer.add(r)


def _run_ttt(ctx, store, layout, seed, shard, every_s, records, writer, stats, group: Group, attempt: str) -> None:
    """Score-first over chunks: score chunk c (batches not yet recorded), then train on it; at a
    chunk boundary at least `every_s` after the last one (rank 0's clock), flush records and save
    the state."""
    p = ctx.recipe.ttt
    trainer = ChunkTrainer(ctx.model, p, group)
    n = num_chunks(len(ctx.val) - 1, p.chunk_tokens)
    if p.then == "after":
        return _run_ttt_after(ctx, store, layout, seed, shard, every_s, records, writer, stats, group, attempt, trainer, n)
    batch_chunk = chunk_of_windows(ctx.windows, p.chunk_tokens)[ctx.bounds[:-1]]

    def usable(chunk: int) -> bool:  # a state is only good if nothing before it must be rescored
        return all(b in records for b in np.flatnonzero(batch_chunk < chunk).tolist())

    start = restore_latest(store, layout, seed, ctx.recipe.name, shard, trainer, usable)
    stats.resumed_chunk = start
    last_state = time.monotonic()
    for c in range(start, n):
        _score(ctx, np.flatnonzero(batch_chunk == c).tolist(), records, writer, stats, group)
        if c == n - 1:
            break
        t = time.perf_counter()
        trainer.train_chunk(ctx.val, c, n, ctx.recipe.seq_len, ctx.device)
        stats.ttt_s += time.perf_counter() - t
        if group.broadcast(time.monotonic() - last_state >= every_s):
            if writer is not None:
                writer.flush()
            t = time.perf_counter()
            save_state(store, layout, seed, ctx.recipe.name, shard, trainer, c + 1, attempt)
            stats.flush_s += time.perf_counter() - t
            last_state = time.monotonic()


def _run_ttt_after(ctx, store, layout, seed, shard, every_s, records, writer, stats, group, attempt, trainer, n) -> None:
    """`then: after` (PR #1176's TTT + SLOT): TTT trains on chunks 0 … n − 2 in order (score-first
    TTT would score each before training on it; those scores are not part of this recipe's number,
    so they are not computed), then the scoring pass scores every batch on the final model. The
    final model is saved before scoring starts, so a resumed unit never trains again."""
    start = restore_latest(store, layout, seed, ctx.recipe.name, shard, trainer)  # nothing scored before the end
    stats.resumed_chunk = start
    last_state = time.monotonic()
    for c in range(start, n - 1):
        t = time.perf_counter()
        trainer.train_chunk(ctx.val, c, n, ctx.recipe.seq_len, ctx.device)
        stats.ttt_s += time.perf_counter() - t
        if c == n - 2 or group.broadcast(time.monotonic() - last_state >= every_s):
            t = time.perf_counter()
            save_state(store, layout, seed, ctx.recipe.name, shard, trainer, c + 1, attempt)
            stats.flush_s += time.perf_counter() - t
            last_state = time.monotonic()
    _score(ctx, list(range(ctx.num_batches)), records, writer, stats, group)


def run_shard(
    spec: CampaignSpec, seed: int, recipe_name: str, store_uri: str, shard: int, default_shards: int = 1,
    group: Group | None = None, attempt: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) one eval shard and commit its done.json. Returns that summary. With a
    group (a TTT recipe on ttt.gpus GPUs), every rank calls this; rank 0 writes. `attempt` names
    this attempt's objects (a new id when None)."""
    recipe = spec.eval_recipe(recipe_name)
    store = open_store(store_uri)
    group = group or Group.on(0, 1, 0, spec.cluster)
    ctx = prepare_context(spec, seed, recipe, store, group.device)  # every input checked before the first write
    plan = group.broadcast(ensure_plan(store, spec, seed, recipe, default_shards) if group.rank == 0 else None)
    return execute(ctx, store, Layout(spec.name), seed, shard, spec.checkpoint_every_s, plan, group, attempt)


def execute(
    ctx: EvalContext, store: Store, layout: Layout, seed: int, shard: int, every_s: float, plan: dict,
    group: Group | None = None, attempt: str | None = None,
) -> dict[str, Any]:
    """Resume from the store's segments (and TTT state), score this shard's missing batches in plan
    order, commit the shard. Another attempt of the same shard may run at the same time: each
    writes only objects named by its own attempt id, and done.json is create-only."""
    recipe = ctx.recipe
    group = group or Group(0, 1, 0, ctx.device)
    attempt = group.broadcast(attempt or new_attempt_id())  # one id for the whole group
    if plan["batches"] != ctx.num_batches or not 0 <= shard < len(plan["shards"]):
        raise ValueError(
            f"{recipe.name}: plan has {plan['batches']} batches in {len(plan['shards'])} shards, "
            f"the data gives {ctx.num_batches} batches (shard {shard} asked): data changed under the campaign"
        )
    if group.world != recipe.gpus:
        raise ValueError(f"{recipe.name}: ttt.gpus is {recipe.gpus}, the unit runs on a group of {group.world}")
    mine = plan["shards"][shard]
    writer = None
    progress = None
    if group.rank == 0:  # rank 0 reads and writes the store; the others follow what it read
        progress = load_progress(store, layout.shard_dir(seed, recipe.name, shard))
        writer = SegmentWriter(store, layout, seed, recipe.name, shard, attempt, every_s)
    got = group.broadcast(progress.records if progress else None)
    records = {b: got[b] for b in mine if b in got}
    stats = EvalStats(resumed_batches=len(records))
    t0 = time.perf_counter()
    if recipe.ttt is None:
        _score(ctx, mine, records, writer, stats, group)
    else:
        _run_ttt(ctx, store, layout, seed, shard, every_s, records, writer, stats, group, attempt)
    nll = merge(list(records.values()))[0]
    if not math.isfinite(nll):
        raise FloatingPointError(f"seed {seed} eval {recipe.name} shard {shard}: nll is {nll}")
    done = {
        "version": RESULT_VERSION,
        "shard": shard,
        "attempt": attempt,
        "batches": len(records),
        "gpus": group.world,
        "artifact_sha256": ctx.artifact_sha256,
        "model": ctx.model_info,
        "unigram_bpb": unigram_bpb(ctx.val, ctx.tables),
        "run": {**asdict(stats), "wall_s": time.perf_counter() - t0},  # this attempt (rank 0), not the numbers
    }
    if writer is not None:
        writer.flush()
        done["run"]["flush_s"] += writer.flush_seconds
        done["provenance"] = attempt_provenance(store, layout, attempt)  # the stack this attempt ran on (docs/reports.md "Reports")
        # the shard's commit object; if another attempt committed first, its records are as good
        # and its commit is the one returned: the driver merges what it was given (workers/result.py)
        key = layout.shard_done(seed, recipe.name, shard)
        if not store.put_new_json(key, done):
            done = store.get_json(key)
    return done


def run_eval(spec: CampaignSpec, seed: int, recipe_name: str, store_uri: str, shards: int = 1) -> dict[str, Any]:
    """Every shard of one eval in this process, one after another, then the merge (no Ray)."""
    store, layout = open_store(store_uri), Layout(spec.name)
    recipe = spec.eval_recipe(recipe_name)
    plan = ensure_plan(store, spec, seed, recipe, shards)
    for k in range(len(plan["shards"])):
        if store.exists(layout.shard_done(seed, recipe.name, k)):
            continue
        if recipe.gpus > 1:
            spawn(_group_shard, recipe.gpus, spec.cluster.accelerator, (spec, seed, recipe_name, store_uri, k))
        else:
            run_shard(spec, seed, recipe_name, store_uri, k)
    return merge_result(store, layout, seed, recipe)


def _group_shard(rank: int, world: int, spec: CampaignSpec, seed: int, recipe: str, store_uri: str, shard: int) -> None:
    run_shard(spec, seed, recipe, store_uri, shard, group=Group.on(rank, world, rank, spec.cluster))
