"""Eval engine: load a seed's artifact, score its val windows batch by batch, checkpoint progress.

Speed comes from (design §5): one hidden-state forward per batch, logits only at the scored
positions (a window of 1024 scoring its last 64 needs 1/16 of the logits), bf16 autocast on GPU,
and index arithmetic in numpy rather than a Python loop per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.spec import CampaignSpec, EvalRecipe
from pipeline.store import Layout, Store, open_store
from workers.artifact import load_artifact, sha256
from workers.device import select_device
from workers.data import bits_per_byte, load_val_tokens, target_bytes, unigram_bpb
from workers.model import GPT
from workers.segments import Record, SegmentWriter, load_progress, merge
from workers.tokenizer import byte_tables, load_sp
from workers.windows import Windows, batch_index, make_windows, num_batches

RESULT_VERSION = 1


@dataclass
class EvalContext:
    """Everything one eval unit needs, loaded once."""

    model: GPT
    val: np.ndarray
    tables: tuple[np.ndarray, np.ndarray, np.ndarray]
    windows: Windows
    recipe: EvalRecipe
    device: torch.device
    artifact_sha256: str

    @property
    def num_batches(self) -> int:
        return num_batches(len(self.windows), self.recipe.batch_seqs)


def load_model(store: Store, layout: Layout, seed: int, device: torch.device) -> tuple[GPT, str]:
    manifest = store.get_json(layout.manifest(seed))
    blob = store.get(layout.artifact(seed))
    if sha256(blob) != manifest["sha256"]:
        raise ValueError(f"{store.uri}/{layout.artifact(seed)}: sha256 does not match its manifest")
    cfg, state = load_artifact(blob, layout.artifact(seed))
    model = GPT(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), manifest["sha256"]


def prepare_context(spec: CampaignSpec, seed: int, recipe: EvalRecipe, store: Store, device: torch.device) -> EvalContext:
    model, digest = load_model(store, Layout(spec.name), seed, device)
    val = load_val_tokens(spec.data.shards, spec.data.val_tokens)
    tables = byte_tables(load_sp(spec.data.tokenizer), model.cfg.vocab_size)
    if int(val.max()) >= model.cfg.vocab_size:
        raise ValueError(f"{spec.data.shards}: val token id {int(val.max())} >= model vocab_size {model.cfg.vocab_size}")
    windows = make_windows(val.size - 1, recipe.seq_len, recipe.stride, recipe.window_filter)
    return EvalContext(model, val, tables, windows, recipe, device, digest)


@torch.no_grad()
def score_sliding(ctx: EvalContext, batch: int) -> Record:
    """Score one batch of windows: Σ nll (float64), tokens and bytes of its scored targets."""
    bi = batch_index(ctx.val, ctx.windows, batch, ctx.recipe.batch_seqs)
    dev = ctx.device
    x = torch.from_numpy(bi.x).to(dev)
    rows, cols = torch.from_numpy(bi.rows).to(dev), torch.from_numpy(bi.cols).to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        h = ctx.model.forward_hidden(x)
        logits = ctx.model.compute_logits(h[rows, cols])
    nll = F.cross_entropy(logits.float(), torch.from_numpy(bi.targets).to(dev), reduction="none")
    n_bytes = int(target_bytes(bi.prev, bi.targets, *ctx.tables).sum())
    return Record(batch, float(nll.double().sum()), int(bi.targets.size), n_bytes)


SCORERS = {"sliding": score_sliding}


def result_from_records(records: list[Record], ctx: EvalContext, seed: int) -> dict[str, Any]:
    nll, tokens, nbytes = merge(records)
    return {
        "version": RESULT_VERSION,
        "seed": seed,
        "recipe": ctx.recipe.model_dump(mode="json"),
        "artifact_sha256": ctx.artifact_sha256,
        "val_loss": nll / tokens,
        "val_bpb": bits_per_byte(nll, nbytes),
        "nll_sum": nll,
        "tokens": tokens,
        "bytes": nbytes,
        "windows": len(ctx.windows),
        "batches": len(records),
        "unigram_bpb": unigram_bpb(ctx.val, ctx.tables),
    }


def run_eval(spec: CampaignSpec, seed: int, recipe_name: str, store_uri: str, shard: int = 0) -> dict[str, Any]:
    """Run (or resume) one eval unit and commit result.json. Returns the result."""
    recipe = spec.eval_recipe(recipe_name)
    store, layout = open_store(store_uri), Layout(spec.name)
    device = select_device(spec.cluster.accelerator, 0, spec.cluster.cpu_threads)
    ctx = prepare_context(spec, seed, recipe, store, device)
    progress = load_progress(store, layout, seed, recipe.name, shard)
    writer = SegmentWriter(store, layout, seed, recipe.name, shard, progress.next_segment, spec.checkpoint_every_s)
    score = SCORERS[recipe.kind]
    records = dict(progress.records)
    for b in range(ctx.num_batches):
        if b not in records:
            records[b] = rec = score(ctx, b)
            writer.add(rec)
    writer.flush()
    result = result_from_records(list(records.values()), ctx, seed)
    if not math.isfinite(result["val_bpb"]):
        raise FloatingPointError(f"seed {seed} eval {recipe.name}: val_bpb is {result['val_bpb']}")
    result["resumed_batches"] = len(progress.records)
    store.put_json(layout.result(seed, recipe.name), result)  # the commit object, written last
    return result
