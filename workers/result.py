"""The result of one (seed, recipe): every shard's records summed in batch order (docs/design.md §6).

Kept apart from the engine so the driver merges results without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipeline.spec import EvalRecipe
from pipeline.store import Layout, Store
from workers.data import bits_per_byte
from workers.segments import Record, load_progress, merge

RESULT_VERSION = 1


def merge_result(
    store: Store, layout: Layout, seed: int, recipe: EvalRecipe, commits: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """When every shard is done: sum the records of all batches in batch order and commit
    result.json (create-only: a merge racing another driver or `pipeline eval` returns the result
    that won). None while a shard is still missing. `commits` are shards' done.json objects the
    caller already holds (what a shard's attempt returned is its commit object): those are not
    read again, which halves a driver's reads per merge."""
    key = layout.result(seed, recipe.name)
    if store.exists(key):
        return store.get_json(key)
    plan = store.get_json(layout.plan(seed, recipe.name))
    listed = store.list(layout.eval_dir(seed, recipe.name))  # one listing: the shards' commits and every segment
    done_keys = [layout.shard_done(seed, recipe.name, k) for k in range(len(plan["shards"]))]
    if not set(done_keys) <= set(listed):
        return None
    commits = commits or {}
    fetched = iter(store.get_many_json([k for i, k in enumerate(done_keys) if i not in commits]))
    dones = [commits[i] if i in commits else next(fetched) for i in range(len(done_keys))]
    # Any complete set of records counts, whichever attempt or shard wrote it.
    progress = load_progress(store, layout.eval_dir(seed, recipe.name), listed)
    missing = [b for b in range(plan["batches"]) if b not in progress.records]
    if missing:
        bad = f"; unreadable segments: {', '.join(progress.corrupt[:3])}" if progress.corrupt else ""
        raise ValueError(
            f"seed {seed} eval {recipe.name}: batches {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(missing)} in all) have no record although every shard committed{bad}"
        )
    nll, tokens, nbytes = merge([progress.records[b] for b in range(plan["batches"])])
    run_keys = ("resumed_batches", "scored_batches", "score_s", "ttt_s", "flush_s", "wall_s")
    result = {
        "version": RESULT_VERSION,
        "seed": seed,
        "recipe": recipe.model_dump(mode="json"),
        "artifact_sha256": dones[0]["artifact_sha256"],
        "model": dones[0].get("model"),  # artifact format, where the architecture came from
        "legality": recipe.legality.as_dict(),
        "val_loss": nll / tokens,
        "val_bpb": bits_per_byte(nll, nbytes),
        "nll_sum": nll,
        "tokens": tokens,
        "bytes": nbytes,
        "windows": plan["windows"],
        "batches": plan["batches"],
        "shards": len(plan["shards"]),
        "unigram_bpb": dones[0]["unigram_bpb"],
        "run": {k: sum(d["run"][k] for d in dones) for k in run_keys},  # summed over the shards' committing attempts
        # Attempts that scored one batch differently (never on CPU; GPU kernels that are not
        # deterministic can): the number uses the first record of each, and says so here.
        "conflicts": [asdict(c) for c in progress.conflicts],
    }
    if not store.put_new_json(key, result):  # the commit object, written last
        return store.get_json(key)
    return result
