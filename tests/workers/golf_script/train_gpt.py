"""A small torchrun-style training script for the tests, written the way the parameter-golf
records are: configured by environment variables, torch.distributed from RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT, rank 0 prints the baseline's log lines and writes the artifact.

The model is tests/workers/toy_adapter.py's PrefixMeanLM, saved in that adapter's format (so the
artifact is evaluated through an adapter). Test knobs: CRASH_SEEDS / CRASH_AT_STEP raise a
ValueError on every rank; KILL_SEEDS / KILL_AT_STEP SIGKILL rank 1 once (a marker file in
KILL_MARKER_DIR), after waiting for a file matching KILL_AFTER_GLOB (the checkpoint snapshot in the
store) when that is set; CKPT_DIR, when set, holds a checkpoint after every step and is resumed from.
"""

import glob
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

seed = int(os.environ["SEED"])
steps = int(os.environ.get("ITERATIONS", "6"))
vocab = int(os.environ.get("VOCAB_SIZE", "512"))
seq_len, batch_seqs, dim = 32, 4, 16
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")  # env:// rendezvous at MASTER_ADDR:MASTER_PORT
torch.set_num_threads(1)
master = rank == 0


def log0(msg):
    if master:
        print(msg, flush=True)


class PrefixMeanLM(nn.Module):  # tests/workers/toy_adapter.py's model, so its adapter loads the artifact
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids):
        e = self.emb(ids)
        prefix = e.cumsum(1) / torch.arange(1, ids.size(1) + 1, dtype=e.dtype)[None, :, None]
        h = F.rms_norm(torch.tanh(self.mix(torch.cat([e, prefix], -1))), (dim,))
        return 20.0 * torch.tanh(self.out(h) / 20.0)


def shard_tokens(split):
    files = sorted(glob.glob(os.path.join(os.environ["DATA_PATH"], f"fineweb_{split}_*.bin")))
    return np.concatenate([np.fromfile(f, dtype="<u2", offset=256 * 4) for f in files]).astype(np.int64)


train, val = shard_tokens("train"), shard_tokens("val")[: 8 * seq_len + 1]
torch.manual_seed(seed)
model = PrefixMeanLM()
opt = torch.optim.Adam(model.parameters(), lr=0.01)
start = 0
ckpt_dir = os.environ.get("CKPT_DIR")
if ckpt_dir and (Path(ckpt_dir) / "ckpt.pt").exists():
    ck = torch.load(Path(ckpt_dir) / "ckpt.pt", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    start = int(ck["step"])
    log0(f"resumed from checkpoint at step {start}")


def batch(step):
    span = batch_seqs * seq_len + 1
    off = ((step * world + rank) * span) % (len(train) - span)
    chunk = torch.from_numpy(train[off : off + span])
    return chunk[:-1].view(batch_seqs, seq_len), chunk[1:].view(batch_seqs, seq_len)


def val_loss():
    with torch.no_grad():
        x = torch.from_numpy(val[:-1]).view(-1, seq_len)
        y = torch.from_numpy(val[1:]).view(-1, seq_len)
        return float(F.cross_entropy(model(x).view(-1, vocab), y.reshape(-1)))


t0 = time.perf_counter()
for step in range(start, steps):
    if str(seed) in os.environ.get("CRASH_SEEDS", "").split(",") and step + 1 == int(os.environ.get("CRASH_AT_STEP", "2")):
        raise ValueError(f"the learning rate schedule is broken at step {step + 1}")
    x, y = batch(step)
    loss = F.cross_entropy(model(x).view(-1, vocab), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    if distributed:
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
    opt.step()
    ms = 1000 * (time.perf_counter() - t0)
    log0(f"step:{step + 1}/{steps} train_loss:{loss.item():.4f} train_time:{ms:.0f}ms step_avg:{ms / (step + 1 - start):.2f}ms")
    if ckpt_dir and master:
        tmp = Path(ckpt_dir) / ".tmp-ckpt.pt"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, tmp)
        os.replace(tmp, Path(ckpt_dir) / "ckpt.pt")
    if distributed:
        dist.barrier()
    marker = Path(os.environ.get("KILL_MARKER_DIR", ".")) / f"killed-seed-{seed}"
    if str(seed) in os.environ.get("KILL_SEEDS", "").split(",") and step + 1 == int(os.environ.get("KILL_AT_STEP", "3")) and not marker.exists():
        if rank == 1:
            deadline = time.monotonic() + 120
            while os.environ.get("KILL_AFTER_GLOB") and not glob.glob(os.environ["KILL_AFTER_GLOB"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            time.sleep(600)  # rank 0 waits in vain, as a peer of a dead rank does

vl = val_loss()
bpb = vl / math.log(2) / 3.0
ms = 1000 * (time.perf_counter() - t0)
log0(f"step:{steps}/{steps} val_loss:{vl:.4f} val_bpb:{bpb:.4f} train_time:{ms:.0f}ms step_avg:{ms / max(steps - start, 1):.2f}ms")
if master:
    torch.save({"vocab": vocab, "dim": dim, "state": model.state_dict()}, "final_model.pt")
    log0(f"Serialized model: {os.path.getsize('final_model.pt')} bytes")
    log0(f"Code size: {len(Path(__file__).read_bytes())} bytes")
if distributed:
    dist.barrier()
log0(f"final_toy_roundtrip val_loss:{vl:.4f} val_bpb:{bpb:.4f} eval_time:1ms")
log0(f"final_toy_roundtrip_exact val_loss:{vl:.8f} val_bpb:{bpb:.8f}")
print(f"rank {rank} done", file=sys.stderr)
if distributed:
    dist.destroy_process_group()
