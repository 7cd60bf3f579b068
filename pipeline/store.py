"""Durable store: a local directory or an S3 prefix, plus the campaign layout inside it.

Objects are written whole and never modified in place: a local write goes to a temp file that is
renamed over the key; an S3 put is atomic. A directory is "done" only when its commit object
exists, and the commit object is written last (see `Layout`). This is the contract that makes
resume possible, so workers and the driver both go through it.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_TMP_MARK = ".tmp-"


class StoreError(RuntimeError):
    pass


class NotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0])


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
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a directory, no trailing slash needed), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object that a newer one made obsolete (old TTT states); missing is fine."""

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def get_json(self, key: str) -> Any:
        data = self.get(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.uri}/{key}: not valid JSON ({e})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_MARK)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key}: not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not name.startswith(_TMP_MARK):
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)


class S3Store(Store):
    """s3://bucket/prefix through boto3 and the standard AWS environment.

    AWS_ENDPOINT_URL (R2, MinIO, RunPod volumes, a local test server), AWS_ACCESS_KEY_ID, AWS_PROFILE,
    AWS_REGION ... are read by boto3 itself; this class never sees or logs credentials.
    """

    def __init__(self, uri: str):
        import boto3

        u = urlparse(uri)
        if not u.netloc:
            raise StoreError(f"{uri}: an S3 store needs a bucket, e.g. s3://bucket/prefix")
        self.bucket = u.netloc
        self.prefix = u.path.strip("/")
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = boto3.client("s3")

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._client.exceptions.NoSuchKey:
            raise NotFoundError(f"{self.uri}/{key}: not found") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)


def open_store(uri: str) -> Store:
    if uri.startswith("s3://"):
        return S3Store(uri)
    if uri.startswith("file://"):
        return LocalStore(urlparse(uri).path)
    if "://" in uri:
        raise StoreError(f"{uri}: unsupported store scheme (use a path, file:// or s3://)")
    return LocalStore(uri)


class Layout:
    """Where each object of a campaign lives (design §3). The commit objects, written last, are
    manifest.json for a train unit and result.json for an eval."""

    def __init__(self, campaign: str):
        self.root = campaign

    @property
    def campaign_json(self) -> str:
        return f"{self.root}/campaign.json"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    def train_dir(self, seed: int) -> str:
        return f"{self.root}/seeds/{seed}/train"

    def artifact(self, seed: int) -> str:
        return f"{self.train_dir(seed)}/model.int8.ptz"

    def manifest(self, seed: int) -> str:
        """Train commit object."""
        return f"{self.train_dir(seed)}/manifest.json"

    def train_log(self, seed: int) -> str:
        return f"{self.train_dir(seed)}/metrics.json"

    def train_ckpt(self, seed: int, step: int) -> str:
        return f"{self.train_dir(seed)}/ckpt/step-{step:08d}"

    def train_error(self, seed: int) -> str:
        """An application error of the worker group (bad input, artifact too large): not retried."""
        return f"{self.train_dir(seed)}/error.json"

    def eval_dir(self, seed: int, recipe: str) -> str:
        return f"{self.root}/seeds/{seed}/eval/{recipe}"

    def plan(self, seed: int, recipe: str) -> str:
        return f"{self.eval_dir(seed, recipe)}/plan.json"

    def shard_done(self, seed: int, recipe: str, shard: int) -> str:
        """Commit object of one eval shard."""
        return f"{self.shard_dir(seed, recipe, shard)}/done.json"

    def shard_dir(self, seed: int, recipe: str, shard: int) -> str:
        return f"{self.eval_dir(seed, recipe)}/shard-{shard}"

    def shard_error(self, seed: int, recipe: str, shard: int) -> str:
        """An application error of a multi-GPU eval unit's group: not retried."""
        return f"{self.shard_dir(seed, recipe, shard)}/error.json"

    def segment(self, seed: int, recipe: str, shard: int, n: int) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/seg-{n:06d}"

    def ttt_state(self, seed: int, recipe: str, shard: int, next_chunk: int) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/state-{next_chunk:06d}"

    def result(self, seed: int, recipe: str) -> str:
        """Eval commit object: written when every shard is done, from all their records."""
        return f"{self.eval_dir(seed, recipe)}/result.json"
