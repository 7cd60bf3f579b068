"""Training checkpoints in the store, so a worker group restarted by Ray Train resumes where it was.

`train/ckpt/step-NNNNNNNN/`: `rank-R.pt` from every rank (rank 0: model, Adam states, EMA, log;
every rank: its own Muon momentum, since Muon splits the matrices across ranks), then
`commit.json` from rank 0 once all ranks have written: a checkpoint without it is ignored. Only the
newest committed checkpoint is kept. Restoring needs the same world size, which Ray Train keeps.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch
import torch.distributed as dist

from pipeline.store import Layout, Store

CKPT_VERSION = 1
_STEP_RE = re.compile(r"/ckpt/step-(\d+)/commit\.json$")


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def save_checkpoint(store: Store, layout: Layout, seed: int, group, step: int, model, opts, ema, meta: dict) -> None:
    """Collective: every rank calls it at the same step."""
    d = layout.train_ckpt(seed, step)
    muon = opts[1]
    own: dict[str, Any] = {"version": CKPT_VERSION, "muon": muon.state_dict()}
    if group.rank == 0:
        own.update(
            model=model.state_dict(),
            adam=[opts[0].state_dict(), opts[2].state_dict()],
            ema=ema,
        )
    store.put(f"{d}/rank-{group.rank}.pt", _dump(own))
    if group.distributed:
        dist.barrier()
    if group.rank == 0:
        store.put_json(f"{d}/commit.json", {"version": CKPT_VERSION, "step": step, "world_size": group.world, **meta})
        for key in store.list(f"{layout.train_dir(seed)}/ckpt"):
            m = re.search(r"/ckpt/step-(\d+)/", key)
            if m and int(m.group(1)) < step:
                store.delete(key)


def latest_checkpoint(store: Store, layout: Layout, seed: int) -> dict | None:
    steps = []
    for key in store.list(f"{layout.train_dir(seed)}/ckpt"):
        m = _STEP_RE.search(key)
        if m:
            steps.append(int(m.group(1)))
    return store.get_json(f"{layout.train_ckpt(seed, max(steps))}/commit.json") if steps else None


def restore_checkpoint(store: Store, layout: Layout, seed: int, group, model, opts, ema) -> dict | None:
    """Load the newest committed checkpoint into model/opts/ema; its commit meta, or None."""
    meta = latest_checkpoint(store, layout, seed)
    if meta is None:
        return None
    if meta["world_size"] != group.world:
        raise ValueError(f"seed {seed}: checkpoint at step {meta['step']} is for {meta['world_size']} workers, not {group.world}")
    d = layout.train_ckpt(seed, meta["step"])
    shared = _load(store.get(f"{d}/rank-0.pt"))
    own = shared if group.rank == 0 else _load(store.get(f"{d}/rank-{group.rank}.pt"))
    model.load_state_dict(shared["model"])
    opts[0].load_state_dict(shared["adam"][0])
    opts[2].load_state_dict(shared["adam"][1])
    opts[1].load_state_dict(own["muon"])
    if ema is not None:
        for k, v in shared["ema"].items():
            ema[k].copy_(v)
    return meta
