"""What every store is: the `Store` interface, its errors, the key rules and one spelling per store URI."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

_TMP_MARK = ".tmp-"


class StoreError(RuntimeError):
    pass


class NotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0])


def normalize_uri(uri: str, base: str | Path | None = None) -> str:
    """One spelling per place: `store`, `./store` and `file://store` are the same local directory
    (absolute, so Ray workers with another cwd see it too); `s3://...` is kept as it is."""
    if uri.startswith("s3://"):
        return "s3://" + uri[len("s3://") :].rstrip("/")  # "s3://" stays itself (and is refused: no bucket)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StoreError(f"{uri}: unsupported store scheme (use a path, file:// or s3://)")
    return str((Path(base or Path.cwd()) / Path(uri).expanduser()).resolve())


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"bad store key {key!r}")
    if any(p.startswith(_TMP_MARK) for p in parts):
        raise StoreError(f"store key {key!r} uses the reserved temp prefix")
    return key


class Store(ABC):
    uri: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the whole object atomically (replacing any previous object at that key)."""

    @abstractmethod
    def put_new(self, key: str, data: bytes) -> bool:
        """Create-only write: True if this call created the object, False if one already existed
        (then nothing is written). Two attempts of a unit racing for one commit object both call
        this; exactly one wins, and the other reads what won."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        """Keys under `prefix` (a directory, no trailing slash needed), sorted; with `start_after`
        (a key), only those that sort after it, so a reader that saw up to a key lists only what came since."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object that a newer one made obsolete (old TTT states); missing is fine."""

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, _json_bytes(obj))

    def put_new_json(self, key: str, obj: Any) -> bool:
        return self.put_new(key, _json_bytes(obj))

    def clean_tmp(self, prefix: str = "", older_than_s: float = 900.0) -> int:
        """Remove temp files that interrupted writes left under `prefix`; how many. Only files
        older than `older_than_s`: a fenced attempt of another process may be writing right now.
        Only a local store has them (an S3 put is atomic)."""
        return 0

    def check(self) -> None:
        """Raise a one-line StoreError if this store cannot be used (unreachable, no such bucket,
        access denied, not a writable directory). Reads only: commands call it before their first write."""

    def get_many(self, keys: list[str], threads: int = 8) -> list[bytes]:
        """`get` of each key, in the order given, fetched `threads` at a time: a merge reads a
        done.json and a segment per shard, and on S3 one after another that is seconds per eval."""
        if len(keys) <= 1:
            return [self.get(k) for k in keys]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
            return list(pool.map(self.get, keys))

    def get_json(self, key: str) -> Any:
        return self._json(key, self.get(key))

    def get_many_json(self, keys: list[str]) -> list[Any]:
        return [self._json(k, data) for k, data in zip(keys, self.get_many(keys), strict=True)]

    def _json(self, key: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.uri}/{key}: not valid JSON ({e})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
