"""`pipeline data prepare`: text documents → a sentencepiece BPE → parameter-golf train/val shards.

Inputs are `.jsonl` files (one {"text": ...} document a line, the fineweb export shape) or any other
file taken as one document. `stdlib_corpus` makes the demo's text from the docstrings of the Python
standard library on this machine (parsed, never imported, never downloaded).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from workers.data import write_shard
from workers.tokenizer import BOS_ID, load_sp, train_tokenizer


def read_documents(files: list[str | Path]) -> Iterator[str]:
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text file not found")
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
                    yield text
        else:
            yield path.read_text(encoding="utf-8")


def _is_val(index: int, text: str, val_fraction: float) -> bool:
    # A document's split depends on its content and position only: re-running prepare on the same
    # files gives the same split, without holding all documents in memory.
    h = hashlib.sha256(f"{index}\0{text}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < val_fraction


def prepare(
    text_files: list[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    shard_tokens: int = 100_000_000,
) -> dict:
    """Train the tokenizer on the train documents and write fineweb_{train,val}_NNNNNN.bin shards.

    Each document is stripped (a leading space after BOS would not count as a byte) and prefixed
    with BOS; no EOS, as in the parameter-golf data."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [d.strip() for d in read_documents(text_files)]
    docs = [d for d in docs if d]
    split = [_is_val(i, d, val_fraction) for i, d in enumerate(docs)]
    train_docs = [d for d, v in zip(docs, split) if not v]
    if not train_docs or all(not v for v in split):
        raise ValueError(f"{len(docs)} documents are too few to split into train and val")
    model_path = train_tokenizer(train_docs, vocab_size, out / "tokenizer")
    sp = load_sp(model_path)

    counts = {}
    for name, is_val in (("train", False), ("val", True)):
        ids = sp.encode([d for d, v in zip(docs, split) if v == is_val])
        flat = np.fromiter((t for doc in ids for t in (BOS_ID, *doc)), dtype=np.int64)
        for old in out.glob(f"fineweb_{name}_*.bin"):
            old.unlink()
        for k, start in enumerate(range(0, flat.size, shard_tokens)):
            write_shard(out / f"fineweb_{name}_{k:06d}.bin", flat[start : start + shard_tokens])
        counts[name] = int(flat.size)
    return {"tokenizer": str(model_path), "documents": len(docs), "tokens": counts}


def stdlib_corpus() -> Iterator[str]:
    """Docstrings of the standard library's modules, classes and functions, in sorted file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    yield doc


def write_stdlib_corpus(out: str | Path, limit: int | None = None) -> int:
    """The standard-library docstrings (the first `limit` of them) as .jsonl; how many."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_corpus(), limit):
            f.write(json.dumps({"text": doc}) + "\n")
            n += 1
    return n
