"""Parameter-golf token shards and the bits-per-byte formula (docs/design.md §5).

A shard is 256 little-endian int32 (magic 20240520, version 1, token count, rest 0) followed by the
tokens as little-endian uint16; its size must be exactly 1024 + 2 × count bytes. Files are
`fineweb_train_*.bin` / `fineweb_val_*.bin`, read in sorted order; val is all val files concatenated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class ShardError(ValueError):
    """A shard file is malformed; the message names the file."""


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ShardError(f"{path}: token ids must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memmap (no copy of a 200 MB file)."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {header[0]} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported shard version {header[1]} (expected {SHARD_VERSION})")
    count = int(header[2])
    if size != HEADER_BYTES + 2 * count:
        raise ShardError(f"{path}: size {size} != {HEADER_BYTES} + 2 × {count} tokens in its header")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_files(shard_dir: str | Path, split: str) -> list[Path]:
    files = sorted(Path(shard_dir).glob(f"fineweb_{split}_*.bin"))
    if not files:
        raise ShardError(f"{shard_dir}: no fineweb_{split}_*.bin shards")
    return files


def count_val_tokens(shard_dir: str | Path, limit: int | None = None) -> int:
    """How many val tokens load_val_tokens would return, from the shard headers only."""
    total = 0
    for f in shard_files(shard_dir, "val"):
        header = np.fromfile(f, dtype="<i4", count=3)
        if header.size < 3 or header[0] != SHARD_MAGIC:
            read_shard(f)  # raises the precise error
        total += int(header[2])
    return total if limit is None else min(total, limit)


def load_val_tokens(shard_dir: str | Path, limit: int | None = None) -> np.ndarray:
    """All val shards concatenated (optionally only the first `limit` tokens), as int64."""
    parts, have = [], 0
    for f in shard_files(shard_dir, "val"):
        toks = read_shard(f)
        if limit is not None:
            toks = toks[: limit - have]
        parts.append(np.asarray(toks, dtype=np.int64))
        have += toks.size
        if limit is not None and have >= limit:
            break
    return np.concatenate(parts)


def check_eval_inputs(spec, model_vocab: int | None = None, model_name: str = "model.vocab_size") -> None:
    """Refuse what an eval would get wrong or fail on half-way, as a one-line ValueError naming the
    file: a val shard whose size does not match its header, a val token id the tokenizer does not
    have (it would count 0 bytes and the bpb would be wrong), a model vocab (`model_vocab`, named
    `model_name` in the message; None: not checked) smaller than the tokenizer's. A model vocab
    larger than the tokenizer's (padded) is fine. Cheap: shard headers, the tokenizer, and the max
    of the val tokens read once through a memmap."""
    from workers.tokenizer import load_sp

    tok = spec.data.tokenizer
    try:
        pieces = int(load_sp(tok).vocab_size())
    except RuntimeError as e:  # sentencepiece: "INTERNAL: could not parse ModelProto from ..."
        raise ValueError(f"{tok}: not a sentencepiece model ({' '.join(str(e).split())[:160]})") from None
    if model_vocab is not None and model_vocab < pieces:
        raise ValueError(
            f"{model_name} {model_vocab} is smaller than tokenizer {tok} ({pieces} pieces): "
            "the model cannot score every token"
        )
    for f in shard_files(spec.data.shards, "val"):
        toks = read_shard(f)  # raises if the file's size does not match its header
        top = int(toks.max()) if toks.size else -1
        if top >= pieces:
            raise ValueError(
                f"{f}: val token id {top} is beyond tokenizer {tok} ({pieces} pieces): the tokenizer does not match the data"
            )


class TokenStream:
    """Train tokens in shard order, endlessly (wraps around). Deterministic: no shuffling."""

    def __init__(self, shard_dir: str | Path):
        self.files = shard_files(shard_dir, "train")
        self.file_idx = 0
        self.tokens = read_shard(self.files[0])
        self.pos = 0

    def _next_file_if_done(self) -> None:
        if self.pos >= self.tokens.size:
            self.file_idx = (self.file_idx + 1) % len(self.files)
            self.tokens = read_shard(self.files[self.file_idx])
            self.pos = 0

    def skip(self, n: int) -> None:
        """Advance past n tokens without reading them (resuming a run at a checkpointed step)."""
        while n:
            self._next_file_if_done()
            k = min(n, self.tokens.size - self.pos)
            self.pos += k
            n -= k

    def take(self, n: int) -> np.ndarray:
        out, left = [], n
        while left:
            self._next_file_if_done()
            k = min(left, self.tokens.size - self.pos)
            out.append(np.asarray(self.tokens[self.pos : self.pos + k], dtype=np.int64))
            self.pos += k
            left -= k
        return np.concatenate(out)


def target_bytes(
    prev: np.ndarray, tgt: np.ndarray, base_bytes: np.ndarray, has_space: np.ndarray, is_boundary: np.ndarray
) -> np.ndarray:
    """UTF-8 bytes each target token stands for: its piece's bytes, plus the leading space unless
    the previous token is a boundary (BOS/control), where the space is not part of the text."""
    return base_bytes[tgt].astype(np.int64) + (has_space[tgt] & ~is_boundary[prev])


def bits_per_byte(nll_sum_nats: float, n_bytes: int) -> float:
    """bpb = (Σ nll in nats / ln 2) / Σ bytes; callers sum in float64."""
    return (nll_sum_nats / math.log(2.0)) / n_bytes


def unigram_bpb(val: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """bpb of the best unigram model of these targets (their own frequencies): a floor any trained
    model must beat to have learned something."""
    tgt, prev = val[1:], val[:-1]
    counts = np.bincount(tgt).astype(np.float64)
    p = counts[tgt] / tgt.size
    nll = float(-np.log(p).sum())
    return bits_per_byte(nll, int(target_bytes(prev, tgt, *tables).sum()))
