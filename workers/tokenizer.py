"""SentencePiece tokenizer: training one for `pipeline data prepare`, and the byte tables of docs/design.md §5."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BOS_ID = 1


def load_sp(model_path: str | Path):
    import sentencepiece as spm

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer model not found")
    return spm.SentencePieceProcessor(model_file=str(path))


def byte_tables(sp, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base_bytes int16, has_leading_space bool, is_boundary bool), each of length
    max(tokenizer vocab, model vocab).

    control/unknown/unused → 0 bytes and boundary; byte-fallback pieces → 1 byte; others → UTF-8
    length of the piece without its leading "▁", flagged if it had one. Ids beyond the tokenizer's
    vocab (a padded model vocab) count as boundary with 0 bytes.
    """
    n = max(int(sp.vocab_size()), vocab_size)
    base = np.zeros(n, dtype=np.int16)
    space = np.zeros(n, dtype=np.bool_)
    boundary = np.ones(n, dtype=np.bool_)
    for i in range(int(sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return base, space, boundary


def train_tokenizer(docs: Iterable[str], vocab_size: int, out_prefix: str | Path) -> Path:
    """Train a BPE model the parameter-golf way: byte fallback, no dummy prefix, BOS id 1, and
    text kept as is (identity normalization, whitespace untouched) so byte counts are exact."""
    import sentencepiece as spm

    out_prefix = Path(out_prefix)
    model = io.BytesIO()
    try:
        _train(spm, docs, vocab_size, model)
    except RuntimeError as e:  # sentencepiece's message is long and multi-line; keep its gist
        raise ValueError(f"tokenizer training failed for --vocab {vocab_size}: {str(e).splitlines()[0][-160:]}") from None
    path = out_prefix.with_suffix(".model")
    path.write_bytes(model.getvalue())
    return path


def _train(spm, docs: Iterable[str], vocab_size: int, model: io.BytesIO) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=0.9995,
        pad_id=0,
        bos_id=BOS_ID,
        eos_id=2,
        unk_id=3,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=1,
        minloglevel=2,
    )
