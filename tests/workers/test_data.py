import json

import numpy as np
import pytest

from pipeline.cli import main
from workers.data import (
    HEADER_BYTES,
    ShardError,
    TokenStream,
    load_val_tokens,
    read_shard,
    target_bytes,
    unigram_bpb,
    write_shard,
)
from workers.prepare import _is_val, read_documents
from workers.tokenizer import BOS_ID, byte_tables, load_sp


def test_shard_round_trip_exact_bytes(tmp_path):
    toks = np.random.default_rng(0).integers(0, 65536, size=1001).astype(np.uint16)
    p = tmp_path / "fineweb_val_000000.bin"
    write_shard(p, toks)
    raw = p.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * 1001
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, 1001] and not header[3:].any()
    assert np.array_equal(read_shard(p), toks)


def test_bad_shards_name_the_file(tmp_path):
    good = tmp_path / "fineweb_val_000000.bin"
    write_shard(good, np.arange(10))
    raw = bytearray(good.read_bytes())

    bad_magic = tmp_path / "fineweb_val_000001.bin"
    bad_magic.write_bytes(b"\x00\x00\x00\x00" + raw[4:])
    with pytest.raises(ShardError, match=r"fineweb_val_000001.bin: bad magic 0"):
        read_shard(bad_magic)

    short = tmp_path / "fineweb_val_000002.bin"
    short.write_bytes(raw[:-2])
    with pytest.raises(ShardError, match=r"fineweb_val_000002.bin: size 1042 != 1024 \+ 2 × 10"):
        read_shard(short)

    version = tmp_path / "fineweb_val_000003.bin"
    version.write_bytes(raw[:4] + (7).to_bytes(4, "little") + raw[8:])
    with pytest.raises(ShardError, match="unsupported shard version 7"):
        read_shard(version)

    tiny = tmp_path / "fineweb_val_000004.bin"
    tiny.write_bytes(b"abc")
    with pytest.raises(ShardError, match="shorter than the 1024-byte header"):
        read_shard(tiny)

    with pytest.raises(ShardError, match="no fineweb_train_"):
        TokenStream(tmp_path)
    with pytest.raises(ShardError, match="uint16"):
        write_shard(tmp_path / "x.bin", np.array([70000]))


def test_val_concatenates_in_sorted_order_and_stream_wraps(tmp_path):
    write_shard(tmp_path / "fineweb_val_000001.bin", np.array([3, 4]))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array([1, 2]))
    assert load_val_tokens(tmp_path).tolist() == [1, 2, 3, 4]
    assert load_val_tokens(tmp_path, limit=3).tolist() == [1, 2, 3]
    write_shard(tmp_path / "fineweb_train_000000.bin", np.array([5, 6, 7]))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.array([8]))
    s = TokenStream(tmp_path)
    assert s.take(3).tolist() == [5, 6, 7] and s.take(3).tolist() == [8, 5, 6]


def test_byte_tables_count_the_utf8_bytes_of_the_val_text(data_dir, corpus):
    """Σ target bytes over the val set == UTF-8 bytes of the val documents' text."""
    sp = load_sp(data_dir / "tokenizer.model")
    tables = byte_tables(sp, 512)
    val = load_val_tokens(data_dir)
    total = int(target_bytes(val[:-1], val[1:], *tables).sum())
    docs = [d.strip() for d in read_documents([corpus])]
    val_docs = [d for i, d in enumerate(docs) if d and _is_val(i, d, 0.1)]
    assert val[0] == BOS_ID and int((val == BOS_ID).sum()) == len(val_docs)
    assert total == sum(len(d.encode("utf-8")) for d in val_docs)
    base, space, boundary = tables
    assert boundary[BOS_ID] and base[BOS_ID] == 0
    assert all(base[i] == 1 for i in range(sp.vocab_size()) if sp.is_byte(i))


def test_byte_rule_leading_space_after_boundary():
    base = np.array([0, 0, 3, 3], dtype=np.int16)
    space = np.array([False, False, True, False])
    boundary = np.array([True, True, False, False])
    # targets: token 2 ("▁abc") after BOS (boundary) → 3 bytes; after token 3 → 4 bytes
    assert target_bytes(np.array([1, 3]), np.array([2, 2]), base, space, boundary).tolist() == [3, 4]


def test_unigram_bpb_is_a_real_entropy(data_dir):
    tables = byte_tables(load_sp(data_dir / "tokenizer.model"), 512)
    val = load_val_tokens(data_dir)
    u = unigram_bpb(val, tables)
    assert 1.0 < u < 10.0


def test_cli_data_prepare(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "ηta", "theta"]
    with open(docs, "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=30))}) + "\n")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--text", str(docs), "--vocab", "320", "--out", str(out)]) == 0
    assert (out / "tokenizer.model").is_file()
    assert read_shard(out / "fineweb_train_000000.bin").size > 0
    assert read_shard(out / "fineweb_val_000000.bin")[0] == BOS_ID
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    assert main(["data", "prepare", "--text", str(bad), "--vocab", "320", "--out", str(out)]) == 2
    assert "bad.jsonl:1: expected a JSON object with a 'text' field" in capsys.readouterr().err
