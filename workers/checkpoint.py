"""Training checkpoints in the store, so a restarted worker group resumes where it was.

`train/ckpt/step-NNNNNNNN-<attempt>/`: `rank-R.pt` from every rank (rank 0: model, Adam states,
EMA, log; every rank: its own Muon momentum, since Muon splits the matrices across ranks), then
`commit.json` from rank 0 once all ranks have written: a checkpoint without it is ignored. The
attempt id in the name keeps two live groups of one seed (a retry while the first still runs
behind a partition) from writing into each other's checkpoint. The newest `keep_checkpoints`
committed checkpoints are kept. Restoring needs the same world size.
"""

from __future__ import annotations

import io
import time
from typing import Any

import torch
import torch.distributed as dist

from pipeline.store import Layout, Store, newest_first

CKPT_VERSION = 1


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def save_checkpoint(
    store: Store, layout: Layout, seed: int, group, step: int, model, opts, ema, meta: dict, attempt: str, keep: int
) -> None:
    """Collective: every rank calls it at the same step. Rank 0 commits only once every rank's file
    is in the store and all of them are of its step: ranks on several nodes upload their own
    parts, and a rank that drifted a step (or whose upload is missing) must not make a commit
    whose parts a restore would mix."""
    d = layout.train_ckpt(seed, step, attempt)
    muon = opts[1]
    own: dict[str, Any] = {"version": CKPT_VERSION, "step": step, "muon": muon.state_dict()}
    if group.rank == 0:
        own.update(
            model=model.state_dict(),
            adam=[opts[0].state_dict(), opts[2].state_dict()],
            ema=ema,
        )
    store.put_new(f"{d}/rank-{group.rank}.pt", _dump(own))
    if group.distributed:
        dist.barrier()  # every rank's put has returned
    if group.rank == 0:
        check_same_step(store, d, seed, step, group.world)
        store.put_new_json(f"{d}/commit.json", {"version": CKPT_VERSION, "step": step, "world_size": group.world, "time": time.time(), **meta})
        prune_checkpoints(store, layout, seed, keep)


def check_same_step(store: Store, d: str, seed: int, step: int, world: int) -> None:
    """Every rank's file of `step` is in `d` (a rank's file is named by the step it saved, so a
    rank that saved another step has none here): else ValueError, and nothing is committed."""
    have = set(store.list(f"{d}/"))
    missing = [r for r in range(world) if f"{d}/rank-{r}.pt" not in have]
    if missing:
        raise ValueError(
            f"seed {seed}: checkpoint at step {step} lacks rank(s) {missing} in {store.uri}/{d} (saved another step, or their"
            " upload is missing); not committing"
        )


def _checkpoints(store: Store, layout: Layout, seed: int) -> tuple[list[tuple[int, str]], dict[str, list[str]]]:
    """(committed (step, dir) newest first, every checkpoint dir → its keys in key order), from one listing."""
    found = newest_first(store, f"{layout.train_dir(seed)}/ckpt", Layout.ckpt_file)
    files: dict[str, list[str]] = {}
    for (_, d), key in reversed(found):
        files.setdefault(d, []).append(key)
    return [(step, d) for (step, d), key in found if key == f"{d}/commit.json"], files


def prune_checkpoints(store: Store, layout: Layout, seed: int, keep: int) -> None:
    """Keep the newest `keep` committed checkpoints; drop older ones, and uncommitted leftovers
    of dead attempts older than the oldest kept one. keep = 0 drops them all (training is done)."""
    committed, files = _checkpoints(store, layout, seed)
    kept = {d for _, d in committed[:keep]}
    oldest = committed[: keep][-1][0] if keep and committed else None
    for d, keys in files.items():
        step = Layout.ckpt_file(keys[0])[0]
        if d in kept or (oldest is not None and step >= oldest and d not in {c for _, c in committed}):
            continue
        for key in keys:
            store.delete(key)


def restore_checkpoint(store: Store, layout: Layout, seed: int, group, model, opts, ema) -> dict | None:
    """Load the newest complete committed checkpoint into model/opts/ema; its commit meta, or
    None. Rank 0 chooses it, so the ranks never restore from two different steps."""
    chosen = None
    if group.rank == 0:
        committed, files = _checkpoints(store, layout, seed)
        for _, d in committed:
            meta = store.get_json(f"{d}/commit.json")
            if meta["world_size"] != group.world:
                raise ValueError(f"seed {seed}: checkpoint at step {meta['step']} is for {meta['world_size']} workers, not {group.world}")
            if all(f"{d}/rank-{r}.pt" in files[d] for r in range(group.world)):
                chosen = d
                break
    chosen = group.broadcast(chosen)
    if chosen is None:
        return None
    meta = store.get_json(f"{chosen}/commit.json")
    shared = _load(store.get(f"{chosen}/rank-0.pt"))
    own = shared if group.rank == 0 else _load(store.get(f"{chosen}/rank-{group.rank}.pt"))
    if own.get("step", meta["step"]) != meta["step"]:  # files of older checkpoints have no step
        raise ValueError(f"seed {seed}: {chosen}/rank-{group.rank}.pt is of step {own['step']}, its commit of step {meta['step']}")
    model.load_state_dict(shared["model"])
    opts[0].load_state_dict(shared["adam"][0])
    opts[2].load_state_dict(shared["adam"][1])
    opts[1].load_state_dict(own["muon"])
    if ema is not None:
        for k, v in shared["ema"].items():
            ema[k].copy_(v)
    return meta
