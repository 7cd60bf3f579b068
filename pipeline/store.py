"""Durable store: a local directory or an S3 prefix, plus the campaign layout inside it.

Objects are written whole and never modified in place: a local write goes to a temp file that is
renamed over the key; an S3 put is atomic. A directory is "done" only when its commit object
exists, and the commit object is written last (see `Layout`). This is the contract that makes
resume possible, so workers and the driver both go through it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a directory, no trailing slash needed), sorted."""

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

    def get_json(self, key: str) -> Any:
        data = self.get(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.uri}/{key}: not valid JSON ({e})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


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


# S3 client settings, explicit because boto3's defaults (legacy retry mode: 5 attempts, fewer error
# kinds retried; 60 s timeouts) suit short calls from a stable host. Here a unit on a rented pod
# puts and gets multi-GB objects (artifacts, TTT states) through S3/R2/MinIO for hours, and a call
# that gives up fails the unit. "standard" mode retries throttling (SlowDown, 503), 5xx, timeouts and
# dropped or refused connections with jittered exponential backoff (1 s base for throttling, up to
# ~70 s over 8 attempts; 50 ms base for the rest), and a connect that hangs costs connect_timeout per
# attempt. ("adaptive" adds client-side rate limiting, which only pays off for many concurrent
# requests from one client; a unit makes a few, one at a time.) The read timeout is the wait for the
# next bytes, not for a whole transfer: generous, since a store can take a while to answer after
# receiving a large body. AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, when set, win over these.
S3_MAX_ATTEMPTS = 8
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 120.0
# `check()` runs before a command's first write, where a wrong endpoint or bucket is far likelier
# than an outage: it answers in seconds rather than after a minute of backing off.
S3_CHECK_ATTEMPTS = 3
S3_CHECK_CONNECT_TIMEOUT_S = 5.0
# error codes that mean "these credentials may not do this" (bad key, bad secret, expired token, policy)
_S3_DENIED = {
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "ExpiredToken", "Forbidden", "InvalidAccessKeyId",
    "InvalidToken", "SignatureDoesNotMatch", "TokenRefreshRequired", "403",
}


def _s3_client(attempts: int, connect_timeout: float):
    import boto3
    from botocore.config import Config

    retries: dict[str, Any] = {}
    if not os.environ.get("AWS_RETRY_MODE"):
        retries["mode"] = "standard"
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["total_max_attempts"] = attempts
    config = Config(retries=retries, connect_timeout=connect_timeout, read_timeout=S3_READ_TIMEOUT_S, tcp_keepalive=True)
    return boto3.client("s3", config=config)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def s3_error(uri: str, err: Exception, key: str | None = None, op: str = "", endpoint: str | None = None) -> StoreError:
    """One line for a boto3/botocore failure on store `uri` (and `key`): where, what and why. Built
    from error codes and our own words, never from request details, so no credential can reach it."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError
    from botocore.exceptions import ConnectionError as S3ConnectionError

    where = f"{uri}/{key}" if key else uri
    what = f"S3 {op}" if op else "S3 request"
    # the endpoint without any user:password@ part
    at = f" {urlparse(endpoint).scheme}://{urlparse(endpoint).netloc.rpartition('@')[2]}" if endpoint else ""
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "unknown"))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _S3_DENIED or status == 403:
            return StoreError(
                f"{where}: {what}: access denied ({code}): check the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) "
                "and the bucket's permissions"
            )
        if code == "NoSuchBucket" or (op == "head_bucket" and (code in ("404", "NotFound") or status == 404)):
            return StoreError(f"{where}: no such bucket {urlparse(uri).netloc!r} at the S3 endpoint{at}")
        message = _one_line(str(err.response.get("Error", {}).get("Message", "")))
        return StoreError(f"{where}: {what} failed: {code}" + (f" (HTTP {status})" if status else "") + (f": {message}" if message else ""))
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return StoreError(f"{where}: no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if isinstance(err, (S3ConnectionError, HTTPClientError)):
        errno = re.search(r"\[Errno -?\d+\] [^'\"]+", str(getattr(err, "kwargs", {}).get("error", "")) or str(err))
        cause = f"{type(err).__name__}: {errno.group(0).strip()}" if errno else type(err).__name__
        return StoreError(f"{where}: cannot reach the S3 endpoint{at} ({cause}; {what} gave up after retrying)")
    return StoreError(f"{where}: {what} failed: {type(err).__name__}: {_one_line(str(err))}")


class S3Store(Store):
    """s3://bucket/prefix through boto3 and the standard AWS environment.

    AWS_ENDPOINT_URL (R2, MinIO, RunPod volumes, a local test server), AWS_ACCESS_KEY_ID, AWS_PROFILE,
    AWS_REGION ... are read by boto3 itself; this class never sees or logs credentials. Every S3
    failure is a one-line StoreError naming the store URI and key (see `s3_error`).
    """

    def __init__(self, uri: str, attempts: int = S3_MAX_ATTEMPTS):
        u = urlparse(uri)
        if not u.netloc:
            raise StoreError(f"{uri}: an S3 store needs a bucket, e.g. s3://bucket/prefix")
        self.bucket = u.netloc
        self.prefix = u.path.strip("/")
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = _s3_client(attempts, S3_CONNECT_TIMEOUT_S)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, op: str, key: str | None = None, client: Any = None) -> Iterator[None]:
        """boto3/botocore errors inside become one StoreError line (StoreErrors raised inside pass)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.uri, e, key, op, (client or self._client).meta.endpoint_url) from None

    def check(self) -> None:
        client = _s3_client(S3_CHECK_ATTEMPTS, S3_CHECK_CONNECT_TIMEOUT_S)
        with self._errors("head_bucket", client=client):
            client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_new(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("put", key):
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                # 412: the object exists; 409: another conditional put on the key is in flight (S3 says retry,
                # and the retry would see the winner's object)
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise

    def get(self, key: str) -> bytes:
        with self._errors("get", key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except self._client.exceptions.NoSuchKey:
                raise NotFoundError(f"{self.uri}/{key}: not found") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("head", key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        with self._errors("list", prefix.rstrip("/") or None):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)


def open_store(uri: str) -> Store:
    uri = normalize_uri(uri)
    return S3Store(uri) if uri.startswith("s3://") else LocalStore(uri)


def new_attempt_id() -> str:
    """Names one attempt of a unit (a Ray task, a worker group, a `pipeline eval` process). Every
    object an attempt writes carries it, so two live attempts of one unit never overwrite each other."""
    return uuid.uuid4().hex[:12]


def _attempt(name: str, attempt: str | None, ext: str = "") -> str:
    return f"{name}-{attempt}{ext}" if attempt else f"{name}{ext}"


class Layout:
    """Where each object of a campaign lives (design §3, README "Store layout"). Commit objects are
    written create-only and last: manifest.json for a train unit, shard-K/done.json for an eval
    shard, result.json for an eval. Objects an attempt writes before its commit carry its attempt id."""

    def __init__(self, campaign: str):
        self.root = campaign

    @property
    def campaign_json(self) -> str:
        return f"{self.root}/campaign.json"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    @property
    def lease_dir(self) -> str:
        """The driver that owns the campaign (pipeline/lease.py)."""
        return f"{self.root}/lease"

    def train_dir(self, seed: int) -> str:
        return f"{self.root}/seeds/{seed}/train"

    def artifact(self, seed: int, attempt: str | None = None) -> str:
        """The artifact an attempt exported; the manifest names the one that was committed
        (`model.int8.ptz` in stores written before attempts had ids)."""
        return f"{self.train_dir(seed)}/{_attempt('model', attempt, '.int8.ptz')}"

    def manifest(self, seed: int) -> str:
        """Train commit object."""
        return f"{self.train_dir(seed)}/manifest.json"

    def train_log(self, seed: int, attempt: str | None = None) -> str:
        return f"{self.train_dir(seed)}/{_attempt('metrics', attempt, '.json')}"

    def train_ckpt(self, seed: int, step: int, attempt: str) -> str:
        return f"{self.train_dir(seed)}/ckpt/step-{step:08d}-{attempt}"

    def script_log(self, seed: int, attempt: str | None = None, rank: int | None = None) -> str:
        """A training script's output (README: Bring your own train_gpt.py): each rank's chunks
        `log-<attempt>/rank-R/NNNNNN.txt` in order, and `log-<attempt>/start.json` when it began."""
        out = f"{self.train_dir(seed)}/log-"  # without an attempt: the prefix of every attempt's folder
        return out if attempt is None else f"{out}{attempt}" + ("" if rank is None else f"/rank-{rank}")

    def script_ckpt(self, seed: int, attempt: str | None = None, node: int | None = None) -> str:
        """Snapshots of a script's checkpoint folder, per node (`snap-N.json` + `blobs/<sha256>`)."""
        out = f"{self.train_dir(seed)}/script-ckpt/"
        return out if attempt is None else f"{out}{attempt}" + ("" if node is None else f"/node-{node}")

    def train_error(self, seed: int, attempt: str) -> str:
        """An application error of the worker group (bad input, artifact too large): not retried."""
        return f"{self.train_dir(seed)}/error-{attempt}.json"

    def eval_dir(self, seed: int, recipe: str) -> str:
        return f"{self.root}/seeds/{seed}/eval/{recipe}"

    def plan(self, seed: int, recipe: str) -> str:
        return f"{self.eval_dir(seed, recipe)}/plan.json"

    def shard_done(self, seed: int, recipe: str, shard: int) -> str:
        """Commit object of one eval shard."""
        return f"{self.shard_dir(seed, recipe, shard)}/done.json"

    def shard_dir(self, seed: int, recipe: str, shard: int) -> str:
        return f"{self.eval_dir(seed, recipe)}/shard-{shard}"

    def shard_error(self, seed: int, recipe: str, shard: int, attempt: str) -> str:
        """An application error of a multi-GPU eval unit's group: not retried."""
        return f"{self.shard_dir(seed, recipe, shard)}/error-{attempt}.json"

    def segment(self, seed: int, recipe: str, shard: int, attempt: str, n: int) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/seg-{attempt}-{n:06d}"

    def ttt_state(self, seed: int, recipe: str, shard: int, next_chunk: int, attempt: str) -> str:
        return f"{self.shard_dir(seed, recipe, shard)}/state-{next_chunk:06d}-{attempt}"

    def estimate(self, seed: int, recipe: str, rule: str) -> str:
        """Commit object of an eval stopped early by its stop rule (digest `rule`): ESTIMATED."""
        return f"{self.eval_dir(seed, recipe)}/estimate-{rule}.json"

    def env_file(self, name: str) -> str:
        """An attempt's software stack beside its provenance: `packages-<sha>.txt` (a pip freeze,
        one per distinct stack) and `nvidia-smi-<attempt>.txt` (workers/provenance.py)."""
        return f"{self.root}/env/{name}"

    def run(self, run_id: str) -> str:
        """What one driver run was given: its resolved spec (status and cost read it)."""
        return f"{self.root}/runs/{run_id}.json"

    def result(self, seed: int, recipe: str) -> str:
        """Eval commit object: written when every shard is done, from all their records."""
        return f"{self.eval_dir(seed, recipe)}/result.json"
