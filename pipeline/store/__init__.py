"""Durable store: a local directory or an S3 prefix, plus the campaign layout inside it.

Objects are written whole and never modified in place: a local write goes to a temp file that is
renamed over the key; an S3 put is atomic. A directory is "done" only when its commit object
exists, and the commit object is written last (see `Layout`). This is the contract that makes
resume possible, so workers and the driver both go through it.

By role: `base` (the Store interface, errors, key rules), `local` and `s3` (the two stores),
`layout` (where each object lives, attempt ids, reading names back); everything is importable from here.
"""

from __future__ import annotations

from pipeline.store.base import NotFoundError, Store, StoreError, normalize_uri
from pipeline.store.layout import Layout, new_attempt_id, newest, newest_first
from pipeline.store.local import LocalStore
from pipeline.store.s3 import (
    S3_CHECK_ATTEMPTS,
    S3_CHECK_CONNECT_TIMEOUT_S,
    S3_CONNECT_TIMEOUT_S,
    S3_MAX_ATTEMPTS,
    S3_READ_TIMEOUT_S,
    S3Store,
    s3_error,
)

__all__ = [
    "Layout", "LocalStore", "NotFoundError", "S3Store", "Store", "StoreError", "new_attempt_id", "newest", "newest_first",
    "normalize_uri", "open_store", "s3_error", "S3_MAX_ATTEMPTS", "S3_CONNECT_TIMEOUT_S", "S3_READ_TIMEOUT_S",
    "S3_CHECK_ATTEMPTS", "S3_CHECK_CONNECT_TIMEOUT_S",
]


def open_store(uri: str) -> Store:
    uri = normalize_uri(uri)
    return S3Store(uri) if uri.startswith("s3://") else LocalStore(uri)
