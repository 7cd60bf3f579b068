"""Score-first test-time training (design §5): the adaptation between chunks, and its checkpoints.

Val targets are cut into chunks of `chunk_tokens`. Chunk c is first scored with the model adapted
on chunks < c only, then the model trains on chunk c: its tokens cut into non-overlapping seq_len
sequences, `epochs` epochs, SGD with momentum (or Muon for 2-D weights), grad-norm clip, and
lr · ½(1 + cos(π c / (n − 1))). The model + optimizer state at a chunk boundary is saved to the
store, so a killed TTT eval resumes there and gives the same bits.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math
import re

import numpy as np
import torch

from pipeline.spec import TTTPass
from pipeline.store import Layout, Store
from workers.model import GPT
from workers.optim import Muon

STATE_VERSION = 1
_STATE_RE = re.compile(r"/state-(\d+)$")


def num_chunks(total_targets: int, chunk_tokens: int) -> int:
    return -(-total_targets // chunk_tokens)


def chunk_lr(c: int, n: int, lr: float) -> float:
    return lr if n <= 1 else lr * 0.5 * (1.0 + math.cos(math.pi * c / (n - 1)))


class ChunkTrainer:
    """The trainable parameters of a TTT pass and their optimizers."""

    def __init__(self, model: GPT, p: TTTPass):
        self.model, self.p = model, p
        self.params = [
            (n, t) for n, t in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in p.params)
        ]
        if not self.params:
            raise ValueError(f"ttt.params {p.params} match no parameter of the model")
        mats = [t for _, t in self.params if t.ndim == 2] if p.optimizer == "muon" else []
        rest = [t for _, t in self.params if not any(t is m for m in mats)]
        self.opts: list[torch.optim.Optimizer] = []
        if mats:
            self.opts.append(Muon(mats, lr=p.lr, momentum=p.momentum, backend_steps=p.muon_backend_steps))
        if rest:
            self.opts.append(torch.optim.SGD(rest, lr=p.lr, momentum=p.momentum))

    def train_chunk(self, val: np.ndarray, c: int, n: int, seq_len: int, device: torch.device) -> None:
        p = self.p
        lo = c * p.chunk_tokens
        hi = min(lo + p.chunk_tokens, val.size - 1)
        n_seq = (hi - lo) // seq_len
        if n_seq == 0:
            return
        x = torch.from_numpy(val[lo : lo + n_seq * seq_len].reshape(n_seq, seq_len)).to(device)
        y = torch.from_numpy(val[lo + 1 : lo + 1 + n_seq * seq_len].reshape(n_seq, seq_len)).to(device)
        lr = chunk_lr(c, n, p.lr)
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = lr
        tensors = [t for _, t in self.params]
        for t in tensors:
            t.requires_grad_(True)
        self.model.train()
        try:
            with torch.enable_grad():
                for _ in range(p.epochs):
                    for i in range(0, n_seq, p.batch_seqs):
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                            loss = self.model(x[i : i + p.batch_seqs], y[i : i + p.batch_seqs])
                        loss.backward()
                        if p.grad_clip:
                            torch.nn.utils.clip_grad_norm_(tensors, p.grad_clip)
                        for opt in self.opts:
                            opt.step()
                            opt.zero_grad(set_to_none=True)
        finally:
            self.model.eval()
            for t in tensors:
                t.requires_grad_(False)

    # --- checkpoints -----------------------------------------------------------------------

    def state_blob(self, next_chunk: int) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "version": STATE_VERSION,
                "next_chunk": next_chunk,
                "params": {n: t.detach().cpu() for n, t in self.params},
                "opts": [o.state_dict() for o in self.opts],
            },
            buf,
        )
        payload = buf.getvalue()
        return hashlib.sha256(payload).hexdigest().encode() + payload

    def load_blob(self, blob: bytes) -> int | None:
        """Restore params and optimizers; the next chunk to score, or None if the blob is bad."""
        digest, payload = blob[:64], blob[64:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            return None
        with torch.no_grad():
            for n, t in self.params:
                t.copy_(state["params"][n])
        for opt, sd in zip(self.opts, state["opts"]):
            opt.load_state_dict(sd)
        return int(state["next_chunk"])


def save_state(store: Store, layout: Layout, seed: int, recipe: str, shard: int, trainer: ChunkTrainer, next_chunk: int) -> None:
    """Write state-<next_chunk>, then drop older states: one checkpoint is enough to resume."""
    store.put(layout.ttt_state(seed, recipe, shard, next_chunk), trainer.state_blob(next_chunk))
    for key in store.list(layout.shard_dir(seed, recipe, shard)):
        m = _STATE_RE.search(key)
        if m and int(m.group(1)) < next_chunk:
            store.delete(key)


def restore_latest(
    store: Store, layout: Layout, seed: int, recipe: str, shard: int, trainer: ChunkTrainer, usable=lambda chunk: True
) -> int:
    """Load the newest readable state whose chunk is `usable` (every batch before it is recorded);
    the chunk to resume from, 0 when there is none."""
    states = []
    for key in store.list(layout.shard_dir(seed, recipe, shard)):
        m = _STATE_RE.search(key)
        if m:
            states.append((int(m.group(1)), key))
    for chunk, key in sorted(states, reverse=True):
        if not usable(chunk):
            continue
        nxt = trainer.load_blob(store.get(key))
        if nxt is not None:
            return nxt
    return 0
