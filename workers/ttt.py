"""Score-first test-time training (docs/design.md §5): the adaptation between chunks, and its checkpoints.

Val targets are cut into chunks of `chunk_tokens`. Chunk c is first scored with the model adapted
on chunks < c only, then the model trains on chunk c: its tokens cut into non-overlapping seq_len
sequences, `epochs` epochs, SGD with momentum (or Muon for 2-D weights), grad-norm clip, and
lr · ½(1 + cos(π c / (n − 1))). The model + optimizer state at a chunk boundary is saved to the
store, so a killed TTT eval resumes there and gives the same bits.

On k GPUs (`ttt.gpus`, docs/design.md §6) the unit is a data-parallel group: every step's batch_seqs
sequences are split across the ranks, each rank's loss is weighted by its share, and the gradients
are summed, so the step is the single-GPU step up to float rounding (the sum runs in another
order). Every rank ends each step with the same weights; the saved state carries each rank's
optimizer state (Muon keeps momentum only for the matrices a rank orthogonalizes).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math

import numpy as np
import torch

from pipeline.spec import TTTPass
from pipeline.store import Layout, NotFoundError, Store, newest_first
from workers.group import Group, weights_digest
from workers.optim import Muon, PlainMuon
from workers.scoring import lm_loss

STATE_VERSION = 2  # 2: one optimizer state per rank


def num_chunks(total_targets: int, chunk_tokens: int) -> int:
    return -(-total_targets // chunk_tokens)


def chunk_lr(c: int, n: int, lr: float) -> float:
    return lr if n <= 1 else lr * 0.5 * (1.0 + math.cos(math.pi * c / (n - 1)))


class ChunkTrainer:
    """The trainable parameters of a TTT pass and their optimizers."""

    def __init__(self, model: torch.nn.Module, p: TTTPass, group: Group):
        self.model, self.p, self.group = model, p, group
        self.params = [
            (n, t) for n, t in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in p.params)
        ]
        if not self.params:
            raise ValueError(f"ttt.params {p.params} match no parameter of the model")
        self.opts: list[torch.optim.Optimizer] = []
        tensors = [t for _, t in self.params]
        if p.optimizer == "adamw":
            self.opts.append(torch.optim.AdamW(tensors, lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay))
            return
        if p.optimizer == "muon_plain":
            self.opts.append(PlainMuon(tensors, lr=p.lr, backend_steps=p.muon_backend_steps))
            return
        mats = [t for _, t in self.params if t.ndim == 2] if p.optimizer == "muon" else []
        rest = [t for _, t in self.params if not any(t is m for m in mats)]
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
        rank, world = self.group.rank, self.group.world
        self.model.train()
        try:
            with torch.enable_grad():
                for _ in range(p.epochs):
                    for i in range(0, n_seq, p.batch_seqs):
                        m = min(p.batch_seqs, n_seq - i)  # this step's sequences; rank r takes its share
                        lo_r, hi_r = i + m * rank // world, i + m * (rank + 1) // world
                        if hi_r > lo_r:
                            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                                loss = lm_loss(self.model, x[lo_r:hi_r], y[lo_r:hi_r])
                            # a mean over this rank's sequences, weighted so the ranks sum to the step's mean
                            (loss * ((hi_r - lo_r) / m)).backward()
                        if self.group.distributed:
                            for t in tensors:
                                if t.grad is None:  # a rank with no sequence this step adds zeros
                                    t.grad = torch.zeros_like(t)
                            self.group.all_reduce_sum_([t.grad for t in tensors])
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

    def local_opt_state(self) -> list[dict]:
        return [_to_cpu(o.state_dict()) for o in self.opts]

    def load_blob(self, blob: bytes) -> int | None:
        """Restore params and this rank's optimizers; the next chunk to score, or None if the blob
        is bad or was written by a group of another size."""
        digest, payload = blob[:64], blob[64:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION or len(state["opts"]) != self.group.world:
            return None
        with torch.no_grad():
            for n, t in self.params:
                t.copy_(state["params"][n])
        for opt, sd in zip(self.opts, state["opts"][self.group.rank]):
            opt.load_state_dict(sd)
        return int(state["next_chunk"])


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_state(
    store: Store, layout: Layout, seed: int, recipe: str, shard: int, trainer: ChunkTrainer, next_chunk: int, attempt: str
) -> None:
    """Collective: rank 0 writes state-<next_chunk>-<attempt> (the weights, every rank's optimizer
    state), then drops older states of any attempt: one checkpoint is enough to resume, and an
    attempt that is still running never reads its old states again. The ranks' weights must agree."""
    group = trainer.group
    digests = group.all_gather(weights_digest(trainer.params))
    if len(set(digests)) != 1:
        raise FloatingPointError(f"ttt: the {group.world} ranks' weights differ before chunk {next_chunk}")
    opts = group.gather(trainer.local_opt_state())
    if group.rank != 0:
        return
    buf = io.BytesIO()
    params = {n: t.detach().cpu() for n, t in trainer.params}
    torch.save({"version": STATE_VERSION, "next_chunk": next_chunk, "params": params, "opts": opts}, buf)
    payload = buf.getvalue()
    store.put_new(layout.ttt_state(seed, recipe, shard, next_chunk, attempt), hashlib.sha256(payload).hexdigest().encode() + payload)
    for key in store.list(layout.shard_dir(seed, recipe, shard)):
        if (chunk := Layout.ttt_chunk(key)) is not None and chunk < next_chunk:
            store.delete(key)


def restore_latest(
    store: Store, layout: Layout, seed: int, recipe: str, shard: int, trainer: ChunkTrainer, usable=lambda chunk: True
) -> int:
    """Collective: load the newest readable state whose chunk is `usable` (every batch before it is
    recorded); the chunk to resume from, 0 when there is none. Rank 0 chooses, so a group never
    resumes from two different states."""
    chosen, nxt = None, 0
    if trainer.group.rank == 0:
        for chunk, key in newest_first(store, layout.shard_dir(seed, recipe, shard), Layout.ttt_chunk):
            if usable(chunk) and (loaded := trainer.load_blob(_get_or_none(store, key))) is not None:
                chosen, nxt = key, loaded
                break
    chosen = trainer.group.broadcast(chosen)
    if trainer.group.rank != 0 and chosen is not None:
        nxt = trainer.load_blob(_get_or_none(store, chosen))
        if nxt is None:
            raise ValueError(f"{store.uri}/{chosen}: TTT state is unreadable on rank {trainer.group.rank}")
    return nxt


def _get_or_none(store: Store, key: str) -> bytes:
    """A state another attempt deleted after we listed it reads as unusable, not as an error."""
    try:
        return store.get(key)
    except NotFoundError:
        return b""
