"""A store in a local directory: a write goes to a temp file beside its key, then is renamed
(`put`) or linked (`put_new`) under the key's name, so an object appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.store.base import _TMP_MARK, NotFoundError, Store, StoreError, _check_key


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write(self, key: str, data: bytes, publish: Callable[[str, Path], None]) -> None:
        """Write to a temp file beside the key, then `publish` it under the key's name."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_MARK)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            publish(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, data, os.replace)

    def put_new(self, key: str, data: bytes) -> bool:
        # link(2) fails if the name exists: the object appears whole, and only once
        try:
            self._write(key, data, os.link)
            return True
        except FileExistsError:
            return False

    def check(self) -> None:
        # the root, or the nearest existing directory it would be created in, must be a writable directory
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise StoreError(f"{self.uri}: not a directory" if p == self.root else f"{self.uri}: {p} is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise StoreError(f"{self.uri}: not writable" if p == self.root else f"{self.uri}: cannot be created ({p} is not writable)")

    def clean_tmp(self, prefix: str = "", older_than_s: float = 900.0) -> int:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        cutoff, n = time.time() - older_than_s, 0
        for p in base.rglob(f"{_TMP_MARK}*") if base.is_dir() else ():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except FileNotFoundError:  # its write finished (renamed) or another cleaner got it
                pass
        return n

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key}: not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not name.startswith(_TMP_MARK):
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    if start_after is None or key > start_after:  # code point order: S3's (UTF-8 byte) order
                        out.append(key)
        return sorted(out)
