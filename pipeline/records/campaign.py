"""The campaign identity object `<campaign>/campaign.json`: what a campaign's results depend on.

The identity is `CampaignSpec.fingerprint_dict()` with the data *paths* replaced by digests of the
data *content*: a replacement pod that mounts the same shards elsewhere resumes the campaign, and
different bytes under the same path are refused. Hashing 10 GB of shards on every run would cost
a minute, so file digests are cached by (realpath, size, mtime_ns, inode) in a small JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.spec import CampaignSpec, ScriptTrain
from pipeline.store import Layout, Store, StoreError

# 1: path-based fingerprint (read, never written); 2: data.shards / data.tokenizer are content digests.
CAMPAIGN_VERSION = 2
DIGEST_CACHE_VERSION = 1
SHARD_SPLITS = ("train", "val")
_BLOCK = 8 << 20
# A file modified this recently may be modified again within the same mtime tick (filesystem
# timestamps are coarse, often a few ms), at the same size and inode, and its cache entry would
# then lie; such files are hashed but not cached (git's "racily clean" problem).
_RACY_NS = 2_000_000_000
# Diff paths whose value is one content digest, reported whole rather than per split or file.
_ATOMS = frozenset({"data.shards", "data.tokenizer"})


class CampaignChanged(RuntimeError):
    """The store holds this campaign under another spec; resuming would mix results."""


def _diff_paths(a: Any, b: Any, prefix: str = "", atoms: frozenset[str] = frozenset()) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict) and prefix not in atoms:
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k), atoms)
        return out
    return [] if a == b else [prefix or "<root>"]


def _hash_json(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# --- file digests and their cache ---------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    """sha256 of the whole file (hashlib.file_digest needs 3.11; this package supports 3.10)."""
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def digest_cache_path() -> Path:
    base = os.environ.get("PIPELINE_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "pipeline") / "digests.json"


def _valid_entry(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and all(isinstance(e.get(k), int) for k in ("size", "mtime_ns", "ino"))
        and isinstance(e.get("digest"), str)
    )


class DigestCache:
    """sha256 of local files, remembered across runs. An entry is reused only while the file's
    size, mtime_ns and inode are what they were; anything unreadable about the cache is a miss."""

    def __init__(self, path: Path | None = None):
        self.path = path or digest_cache_path()
        self.files: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # none yet, or corrupt: start empty, the next save rewrites it
        if isinstance(data, dict) and data.get("version") == DIGEST_CACHE_VERSION and isinstance(data.get("files"), dict):
            self.files = {k: v for k, v in data["files"].items() if _valid_entry(v)}
        else:
            self._dirty = True  # unknown version: rewrite it in the format this code reads

    def digest(self, path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        hit = self.files.get(real)
        if hit is not None and all(hit[k] == v for k, v in key.items()):
            return hit["digest"]
        started = time.time_ns()
        digest = _sha256_file(Path(real))
        after = os.stat(real)
        # only a file that held still while it was read, and not too recently written, is remembered
        stable = (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
        if stable and st.st_mtime_ns < started - _RACY_NS:
            self.files[real] = {**key, "digest": digest}
            self._dirty = True
        else:
            self.files.pop(real, None)
        return digest

    def save(self) -> None:
        """Atomic write (temp file + rename); a cache that cannot be written only costs a re-hash."""
        if not self._dirty:
            return
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".digests-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": DIGEST_CACHE_VERSION, "files": self.files}, f, sort_keys=True)
            os.replace(tmp, self.path)
            tmp = None
            self._dirty = False
        except OSError:
            pass
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


# --- the content fingerprint --------------------------------------------------------------------


def _local(path: str, field: str) -> Path:
    if "://" in path:
        raise ValueError(f"{field}: {path}: a remote path cannot be hashed here; mount the data and give a local path")
    return Path(path)


def shard_digests(shard_dir: str, cache: DigestCache) -> dict[str, list[str]]:
    """Per split, the digests of its files in the order the workers read them (same glob and sort
    as workers.data.shard_files). No train split is fine (an eval-only campaign); no val is not."""
    root = _local(shard_dir, "data.shards")
    if not root.is_dir():
        raise ValueError(f"data.shards: {shard_dir}: not a directory")
    out: dict[str, list[str]] = {}
    for split in SHARD_SPLITS:
        files = sorted(root.glob(f"fineweb_{split}_*.bin"))
        try:
            out[split] = [cache.digest(f) for f in files]
        except OSError as e:
            raise ValueError(f"data.shards: {e.filename}: cannot read ({e.strerror})") from None
    if not out["val"]:
        raise ValueError(f"data.shards: {shard_dir}: no fineweb_val_*.bin shards")
    return out


def tokenizer_digest(tokenizer: str, cache: DigestCache) -> str:
    path = _local(tokenizer, "data.tokenizer")
    try:
        return cache.digest(path)
    except OSError as e:
        raise ValueError(f"data.tokenizer: {tokenizer}: cannot read ({e.strerror})") from None


def artifact_digest(seed: int, path: str, cache: DigestCache) -> str:
    try:
        return cache.digest(_local(path, f"artifacts.{seed}"))
    except OSError as e:
        raise ValueError(f"artifacts.{seed}: {path}: cannot read ({e.strerror})") from None


def script_digest(spec: CampaignSpec, cache: DigestCache) -> str:
    """A script campaign's train_gpt.py by content: moved elsewhere it is the same campaign, edited it is not."""
    path = spec.train.script_file()
    try:
        return cache.digest(_local(str(path), "train.script"))
    except OSError as e:
        raise ValueError(f"train.script: {path}: cannot read ({e.strerror})") from None


def content_fingerprint_dict(spec: CampaignSpec, cache: DigestCache | None = None) -> dict[str, Any]:
    """`spec.fingerprint_dict()` with data.shards and data.tokenizer replaced by content digests."""
    if cache is None:
        cache = DigestCache()
    try:
        d = spec.fingerprint_dict()
        d["data"]["shards"] = shard_digests(spec.data.shards, cache)
        d["data"]["tokenizer"] = tokenizer_digest(spec.data.tokenizer, cache)
        if spec.artifacts is not None:  # eval-only: the artifacts' content, not where they lie
            d["artifacts"] = {str(s): artifact_digest(s, p, cache) for s, p in spec.artifacts.items()}
        if isinstance(spec.train, ScriptTrain):
            d["train"]["script"] = script_digest(spec, cache)
    finally:
        cache.save()  # keep what was hashed even when a later file failed
    return d


# --- campaign.json --------------------------------------------------------------------------------


def _changed(spec: CampaignSpec, store: Store, old: Any, new: dict[str, Any]) -> CampaignChanged:
    changed = _diff_paths(old if isinstance(old, dict) else {}, new, atoms=_ATOMS)
    return CampaignChanged(
        f"campaign {spec.name!r} in {store.uri} was started with another spec "
        f"(changed: {', '.join(changed) or 'format'}); use a new name or a new store"
    )


def _check_existing(spec: CampaignSpec, store: Store, key: str) -> None:
    old = store.get_json(key)
    version = old.get("version") if isinstance(old, dict) else None
    if version == 1:
        # written by the path-based code: compared as that code did, and left as it is
        if old.get("fingerprint") != spec.fingerprint():
            raise _changed(spec, store, old.get("spec"), spec.fingerprint_dict())
        return
    if version != CAMPAIGN_VERSION:
        raise StoreError(f"{store.uri}/{key}: unknown campaign.json version {version!r} (this code reads 1 and {CAMPAIGN_VERSION})")
    current = content_fingerprint_dict(spec)
    if old.get("fingerprint") != _hash_json(current):
        raise _changed(spec, store, old.get("spec"), current)


def check_campaign(spec: CampaignSpec, store: Store) -> bool:
    """Write campaign.json on first run; on later runs refuse a spec whose results would differ.
    Returns True when the campaign already existed."""
    key = Layout(spec.name).campaign_json
    if store.exists(key):
        _check_existing(spec, store, key)
        return True
    current = content_fingerprint_dict(spec)
    record = {"version": CAMPAIGN_VERSION, "fingerprint": _hash_json(current), "spec": current}
    if store.put_new_json(key, record):
        return False
    _check_existing(spec, store, key)  # another driver created it first: held to what it wrote
    return True
