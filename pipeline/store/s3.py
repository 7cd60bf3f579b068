"""A store under an S3 prefix (AWS, R2, MinIO, ...) through boto3, with client settings for long
transfers from rented pods, and every failure as one line that names the store and key (`s3_error`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from pipeline.store.base import NotFoundError, Store, StoreError, _check_key


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
    # connections: a driver's parallel gets (Store.get_many, 8) beside its heartbeat and ledger writer
    config = Config(
        retries=retries, connect_timeout=connect_timeout, read_timeout=S3_READ_TIMEOUT_S, tcp_keepalive=True, max_pool_connections=32,
    )
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

    def list(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        after = {"StartAfter": f"{self.prefix}/{start_after}" if self.prefix else start_after} if start_after else {}
        out = []
        with self._errors("list", prefix.rstrip("/") or None):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, **after):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)
