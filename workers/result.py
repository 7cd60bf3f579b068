"""The result of one (seed, recipe): every shard's records summed in batch order (design §6).

Kept apart from the engine so the driver merges results without importing torch.
"""

from __future__ import annotations

from typing import Any

from pipeline.spec import EvalRecipe
from pipeline.store import Layout, Store
from workers.data import bits_per_byte
from workers.segments import Record, load_progress, merge

RESULT_VERSION = 1


def merge_result(store: Store, layout: Layout, seed: int, recipe: EvalRecipe) -> dict[str, Any] | None:
    """When every shard is done: sum all records in batch order and commit result.json.
    None while a shard is still missing."""
    plan = store.get_json(layout.plan(seed, recipe.name))
    dones = []
    for k in range(len(plan["shards"])):
        key = layout.shard_done(seed, recipe.name, k)
        if not store.exists(key):
            return None
        dones.append(store.get_json(key))
    records: dict[int, Record] = {}
    for k, batches in enumerate(plan["shards"]):
        got = load_progress(store, layout, seed, recipe.name, k).records
        records.update((b, got[b]) for b in batches if b in got)
    missing = plan["batches"] - len(records)
    if missing:
        raise ValueError(f"seed {seed} eval {recipe.name}: {missing} batches have no record although every shard is done")
    nll, tokens, nbytes = merge(list(records.values()))
    run_keys = ("resumed_batches", "scored_batches", "score_s", "ttt_s", "flush_s", "wall_s")
    result = {
        "version": RESULT_VERSION,
        "seed": seed,
        "recipe": recipe.model_dump(mode="json"),
        "artifact_sha256": dones[0]["artifact_sha256"],
        "val_loss": nll / tokens,
        "val_bpb": bits_per_byte(nll, nbytes),
        "nll_sum": nll,
        "tokens": tokens,
        "bytes": nbytes,
        "windows": plan["windows"],
        "batches": plan["batches"],
        "shards": len(plan["shards"]),
        "unigram_bpb": dones[0]["unigram_bpb"],
        "run": {k: sum(d["run"][k] for d in dones) for k in run_keys},  # summed over the shards' last attempts
    }
    store.put_json(layout.result(seed, recipe.name), result)  # the commit object, written last
    return result
