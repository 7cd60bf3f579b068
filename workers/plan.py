"""The eval plan of one (seed, recipe): its batches and which shard scores which (docs/design.md §6).

Written once to `plan.json` and reused by every attempt, so shards, restarts and the final merge
all agree on batch numbers. Independent batches (no TTT) are dealt to shards in a seeded random
order and each shard scores its batches in that order: whatever is done at any moment is a random
sample of the batches, so the running bpb is an unbiased estimate. A TTT recipe is one shard that
scores its batches in order, chunk after chunk.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pipeline.spec import CampaignSpec, EvalRecipe
from pipeline.store import Layout, NotFoundError, Store
from workers.data import count_val_tokens
from workers.windows import Windows, make_windows, plan_batches

PLAN_VERSION = 1


def val_length(n_val: int, recipe: EvalRecipe) -> int:
    """Val tokens a recipe evaluates: all, or with `val_truncate` ((n − 1) // seq_len) · seq_len + 1
    as the records load val (a no-op on the standard val set at seq 1024 and 2048)."""
    if not recipe.val_truncate:
        return n_val
    keep = (n_val - 1) // recipe.seq_len * recipe.seq_len + 1
    if keep < 2:
        raise ValueError(f"{recipe.name}: val_truncate leaves no full seq_len ({recipe.seq_len}) sequence of {n_val} val tokens")
    return keep


def recipe_batches(n_val: int, recipe: EvalRecipe) -> tuple[Windows, np.ndarray]:
    """A recipe's windows and batch bounds over `n_val` val tokens. Per-chunk TTT batches never
    cross a chunk (the model changes between chunks); a ttt pass with `then: after` adapts first,
    so its scoring pass batches like a recipe without TTT."""
    w = make_windows(n_val - 1, recipe.seq_len, recipe.stride, recipe.window_filter)
    per_chunk = recipe.ttt is not None and recipe.ttt.then == "per_chunk"
    return w, plan_batches(w, recipe.batch_seqs, recipe.ttt.chunk_tokens if per_chunk else None, recipe.rank_split)


def plan_geometry(spec: CampaignSpec, recipe: EvalRecipe) -> tuple[int, int]:
    """(windows, batches) of a recipe on the campaign's val set, from the shard headers alone."""
    w, bounds = recipe_batches(val_length(count_val_tokens(spec.data.shards, spec.data.val_tokens), recipe), recipe)
    return len(w), int(bounds.size - 1)


def make_plan(seed: int, recipe: EvalRecipe, windows: int, batches: int, shards: int) -> dict[str, Any]:
    if not recipe.shardable:
        assignment = [list(range(batches))]
    else:
        shards = max(1, min(shards, batches))
        # The order depends only on (seed, number of batches): a re-plan gives the same shards, and
        # recipes that score the same batches (SLOT-20 and SLOT-100 on one seed) share it, so the
        # batches both have done coincide and pair (docs/progress-cost.md "Paired comparisons").
        key = hashlib.sha256(f"{seed}/{batches}".encode()).digest()
        order = np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(batches)
        assignment = [part.tolist() for part in np.array_split(order, shards)]
    return {"version": PLAN_VERSION, "recipe": recipe.name, "windows": windows, "batches": batches, "shards": assignment}


def ensure_plan(
    store: Store, spec: CampaignSpec, seed: int, recipe: EvalRecipe, default_shards: int, geometry: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The stored plan, or a new one written now. plan.json is create-only: two drivers planning
    at once with different GPU counts both end up using the one that was written first.
    `geometry` is `plan_geometry(spec, recipe)` where the caller already has it (the same for
    every seed: a sweep's driver computes it once per recipe)."""
    key = Layout(spec.name).plan(seed, recipe.name)
    try:
        plan = store.get_json(key)  # one request: most calls find the plan
    except NotFoundError:
        pass
    else:
        if plan.get("version") != PLAN_VERSION:
            raise ValueError(f"{store.uri}/{key}: unsupported plan version {plan.get('version')}")
        return plan
    windows, batches = geometry or plan_geometry(spec, recipe)
    plan = make_plan(seed, recipe, windows, batches, recipe.shards or default_shards)
    return plan if store.put_new_json(key, plan) else ensure_plan(store, spec, seed, recipe, default_shards, geometry)
