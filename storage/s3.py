"""S3 storage over boto3: ``s3://bucket/prefix`` behind the same ``Storage`` interface as a folder.

Credentials come from boto3's standard chain (env, ``AWS_PROFILE``, instance roles) and the
endpoint from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible stores such
as the embedded SeaweedFS. Nothing here ever stores, pickles, logs or prints a secret: error
messages show the access key masked (``AKIA…XYZ``) and never the secret key.
"""
from __future__ import annotations

import copy
import hashlib
import mimetypes
import os
import threading
import time
import uuid
from urllib.parse import urlparse

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from novarch_batch.storage.base import UPLOAD_CONCURRENCY, StorageError, join, parse_s3_url

DEFAULT_REGION = "us-east-1"  # SeaweedFS and most S3-compatible stores accept any region; AWS needs one
# One connection per upload thread, plus a few for the shard's Parquet PUT, lists and reads,
# so no thread waits on urllib3's pool (botocore's default of 10 would serialise the uploads).
MAX_POOL_CONNECTIONS = UPLOAD_CONCURRENCY + 4
# Standard retry mode with 10 attempts: non-throttling back-off is rand * 0.05 s * 2**i, so ten
# attempts ride out a store outage of roughly 10-25 s before the driver's shard retry takes over.
DATA_MAX_ATTEMPTS = 10
ATTEMPTS_ENV = "NOVARCH_S3_MAX_ATTEMPTS"  # overrides DATA_MAX_ATTEMPTS (the driver forwards it to actors)
# Pre-flight: 2 attempts and 3 s timeouts, so a wrong or unreachable endpoint fails in under
# ~10 s instead of the data path's minutes of retrying.
PREFLIGHT_MAX_ATTEMPTS = 2
PREFLIGHT_TIMEOUT_S = 3
PROBE_PREFIX = ".novarch-probe-"

_ACCESS_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "Forbidden",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}
_CONFLICT_CODES = {"ConditionalRequestConflict", "409"}
_CONDITION_FAILED = _PRECONDITION_CODES | _NOT_FOUND_CODES | _CONFLICT_CODES  # an If-Match that did not hold
CONFLICT_RETRIES = 5


def endpoint_from_env() -> str | None:
    """The S3 endpoint override boto3 itself would use, or None for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def mask_key(access_key: str | None) -> str:
    """``AKIA…XYZ``: enough to tell keys apart, never the whole key."""
    if not access_key:
        return "(none)"
    if len(access_key) < 10:
        return access_key[:2] + "…"
    return f"{access_key[:4]}…{access_key[-3:]}"


def _config(*, preflight: bool, path_style: bool, unsigned: bool) -> Config:
    kwargs = dict(
        retries={"mode": "standard", "max_attempts": PREFLIGHT_MAX_ATTEMPTS if preflight else int(os.environ.get(ATTEMPTS_ENV, DATA_MAX_ATTEMPTS))},
        connect_timeout=PREFLIGHT_TIMEOUT_S if preflight else 10,
        # 120 s: a multi-hundred-MB Parquet shard on a slow link still completes.
        read_timeout=PREFLIGHT_TIMEOUT_S if preflight else 120,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # Path style (http://host:port/bucket/key): S3-compatible stores on an IP or localhost
        # have no per-bucket DNS names, so virtual-hosted style cannot work there.
        s3={"addressing_style": "path" if path_style else "auto"},
    )
    if unsigned:
        kwargs["signature_version"] = UNSIGNED
    return Config(**kwargs)


class S3Storage:
    """Objects under ``s3://bucket/prefix``; thread-safe, picklable without credentials."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        unsigned: bool = False,
        page_size: int = 1000,
    ):
        if not bucket:
            raise StorageError("s3:// URL has no bucket; use s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Only what the caller passed explicitly is kept (and pickled); the rest is resolved
        # from the environment of whichever process uses the object.
        self._endpoint_arg = endpoint_url
        self._region_arg = region
        self.unsigned = unsigned
        self.page_size = page_size  # S3 returns at most 1000 keys a page; smaller only for tests
        self._reset()

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "S3Storage":
        return cls(*parse_s3_url(url), **kwargs)

    # -- client ------------------------------------------------------------------------

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._session: boto3.Session | None = None
        self._client = None
        self._preflight_client = None

    def __getstate__(self) -> dict:
        # Ray ships storages to actors: send the address only. Clients hold credentials and
        # sockets; each process builds its own from its own credential chain.
        state = self.__dict__.copy()
        for name in ("_lock", "_session", "_client", "_preflight_client"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def endpoint_url(self) -> str | None:
        return self._endpoint_arg or endpoint_from_env()

    def _get_session(self) -> boto3.Session:
        if self._session is None:
            self._session = boto3.Session()
        return self._session

    @property
    def region(self) -> str:
        return self._region_arg or self._get_session().region_name or DEFAULT_REGION

    def _make_client(self, preflight: bool):
        return self._get_session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=_config(preflight=preflight, path_style=self.endpoint_url is not None, unsigned=self.unsigned),
        )

    @property
    def client(self):
        """The shared boto3 client (botocore clients are thread-safe; creating one is not)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client(preflight=False)
        return self._client

    def _preflight(self):
        with self._lock:
            if self._preflight_client is None:
                self._preflight_client = self._make_client(preflight=True)
        return self._preflight_client

    def fail_fast(self) -> "S3Storage":
        """The same objects through the pre-flight client (2 attempts, 3 s timeouts): a lease's heartbeat
        must not sit in the data path's back-off or a 120 s read timeout while its lease ages."""
        quick = copy.copy(self)  # shares the session and its lock; only the client differs
        quick._client = self._preflight()
        return quick

    def access_key(self) -> str | None:
        """The access key id in use (for masked display only), or None without credentials."""
        if self.unsigned:
            return None
        try:
            creds = self._get_session().get_credentials()
        except BotoCoreError:
            return None
        return creds.access_key if creds is not None else None

    # -- keys --------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _where(self, key: str = "") -> str:
        return join(self.url, key) if key else self.url

    # -- Storage protocol --------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes the object visible whole or not at all, so this is atomic.
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from None

    def exists(self, key: str) -> bool:
        return self._unless(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)), _NOT_FOUND_CODES) is not None

    def list(self, prefix: str = "") -> list[str]:
        # list("") on s3://b/p lists "p/", never the sibling "p2/".
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = self._rel(obj["Key"])
                    if not rel.rsplit("/", 1)[-1].startswith(PROBE_PREFIX):
                        keys.append(rel)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from None

    # -- conditional writes (If-None-Match / If-Match) ----------------------------------

    def create(self, key: str, data: bytes) -> str | None:
        """PUT only if the key does not exist (If-None-Match: *): the new ETag, or None when it exists.
        Of any number of concurrent creates of one key, exactly one succeeds."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*",
                                                  ContentType=mimetypes.guess_type(key)[0] or "application/octet-stream")
                return response["ETag"]
            except ClientError as exc:
                if _code(exc) in _PRECONDITION_CODES:
                    return None
                if _code(exc) not in _CONFLICT_CODES or attempt == CONFLICT_RETRIES - 1:
                    raise self._error(exc, key) from None
            except BotoCoreError as exc:
                raise self._error(exc, key) from None
            time.sleep(0.05 * (attempt + 1))  # AWS: another conditional write of this key is in progress
        return None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, ETag), or None when the key does not exist."""
        def get():
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]

        return self._unless(key, get, _NOT_FOUND_CODES)

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        """PUT only if the object is still at `version` (If-Match: compare-and-swap): the new ETag, or None."""
        response = self._unless(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=version),
                                _CONDITION_FAILED)
        return response["ETag"] if response else None

    def delete_version(self, key: str, version: str) -> bool:
        """DELETE only if the object is still at `version`; False when it is not (or is gone)."""
        return self._unless(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=version),
                            _CONDITION_FAILED) is not None

    def _unless(self, key: str, request, refused: set[str]):
        """The request's response, or None when S3 answered with one of the `refused` error codes
        (not found, a condition that did not hold); any other error names the fix."""
        try:
            return request()
        except ClientError as exc:
            if _code(exc) in refused:
                return None
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    def honours_conditional_writes(self) -> bool:
        """Pre-flight: does this store refuse a second If-None-Match create, and a write If-Match a version
        the object is not at? (AWS S3 since 2024 and SeaweedFS do both; a store that ignores either header
        would let two writers both win: two commits of a shard, or two drivers taking one stale lease.) A
        store that refuses the headers outright (HTTP 501, NotImplemented) does not honour them either."""
        probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            first, second = self.create(probe, b"1"), self.create(probe, b"2")
            if first is None or second is not None:
                return False
            stale = self.replace(probe, b"3", '"00000000000000000000000000000000"')
            return stale is None and self.replace(probe, b"4", first) is not None
        except StorageError as e:
            if "NotImplemented" in str(e) or "(HTTP 501)" in str(e):
                return False
            raise
        finally:
            self.delete(probe)

    def child(self, prefix: str) -> "S3Storage":
        sub = S3Storage(
            self.bucket, join(self.prefix, prefix).strip("/"), endpoint_url=self._endpoint_arg,
            region=self._region_arg, unsigned=self.unsigned, page_size=self.page_size,
        )
        # Share the client and its connection pool: one client per storage tree, not per child.
        sub._session, sub._client = self._get_session(), self.client
        return sub

    # -- extras ------------------------------------------------------------------------

    def get_to_file(self, key: str, path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
        """Stream one object to ``path``; return the sha256 of the bytes received."""
        digest = hashlib.sha256()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            expected_size = response.get("ContentLength")
            size = 0
            with open(path, "wb") as f:
                for chunk in response["Body"].iter_chunks(chunk_size):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from None
        if expected_size is not None and size != expected_size:
            raise StorageError(f"{self._where(key)}: got {size} of {expected_size} bytes; the download was cut, retry")
        return digest.hexdigest()

    def prune(self) -> None:
        """Nothing to do: S3 has no folders, so a prefix with no objects is not there."""

    def check_readable(self) -> None:
        """Pre-flight for reading: one LIST with the pre-flight client, so a wrong or unreachable endpoint,
        a missing bucket or refused keys fail in seconds, with the fix, and nothing is written."""
        try:
            self._preflight().list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def check_writable(self) -> None:
        """Pre-flight: write, list and delete a probe object, failing fast with the fix."""
        probe = self._key(f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        try:
            client = self._preflight()
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"novarch-batch write probe")
            # The driver lists the prefix to resume a job: check that permission up front too.
            client.list_objects_v2(Bucket=self.bucket, Prefix=probe, MaxKeys=1)
            client.delete_object(Bucket=self.bucket, Key=probe)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None

    def pyarrow_filesystem(self):
        """A ``pyarrow.fs.S3FileSystem`` for the same store and credentials (do not log or pickle it)."""
        return pyarrow_filesystem(endpoint_url=self.endpoint_url, region=self.region, unsigned=self.unsigned)

    def arrow_path(self, key: str = "") -> str:
        """``bucket/prefix/key``: the path form pyarrow's S3FileSystem expects."""
        return f"{self.bucket}/{self._key(key)}".rstrip("/") if key or self.prefix else self.bucket

    # -- errors ------------------------------------------------------------------------

    def _error(self, exc: Exception, key: str = "") -> StorageError:
        """One line naming the fix; never the secret, the access key only masked."""
        where = self._where(key)
        region = self._region_arg or (self._session and self._session.region_name) or DEFAULT_REGION
        endpoint = self.endpoint_url or f"https://s3.{region}.amazonaws.com"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
                "(for the embedded server, `novarch-batch storage serve` prints them)"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageError(f"{where}: cannot reach endpoint {endpoint}; check AWS_ENDPOINT_URL or your network")
        if isinstance(exc, ProfileNotFound):
            return StorageError(f"{where}: AWS profile '{exc.kwargs.get('profile')}' not found in ~/.aws/config; fix AWS_PROFILE")
        if isinstance(exc, ConnectionClosedError):
            return StorageError(f"{where}: endpoint {endpoint} closed the connection; retry, or check the server's health")
        if isinstance(exc, ReadTimeoutError):
            return StorageError(f"{where}: endpoint {endpoint} did not answer in time; check the server's health or your network")
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return StorageError(
                    f"{where}: bucket '{self.bucket}' does not exist; create it "
                    f"(e.g. `aws s3 mb s3://{self.bucket}`) or correct the bucket name in the URL"
                )
            if code in _NOT_FOUND_CODES:
                return StorageError(f"{where}: not found")
            if code in _ACCESS_CODES:
                if self.unsigned:
                    return StorageError(f"{where}: access denied to unsigned requests; set AWS credentials for this bucket")
                return StorageError(
                    f"{where}: access denied for key {mask_key(self.access_key())}; "
                    "check AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            return StorageError(f"{where}: S3 error {code} (HTTP {status}) from {endpoint}; retry, or check the server's logs")
        # Other botocore errors: their messages hold names and URLs, never credentials.
        return StorageError(f"{where}: {type(exc).__name__}: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _resolved_credentials(unsigned: bool):
    if unsigned:
        return None
    creds = boto3.Session().get_credentials()
    return creds.get_frozen_credentials() if creds is not None else None


def pyarrow_filesystem(*, endpoint_url: str | None = None, region: str | None = None, unsigned: bool = False):
    """``pyarrow.fs.S3FileSystem`` from boto3's credential chain and ``AWS_ENDPOINT_URL``."""
    from pyarrow import fs

    endpoint_url = endpoint_url or endpoint_from_env()
    kwargs: dict = {"region": region or boto3.Session().region_name or DEFAULT_REGION}
    creds = _resolved_credentials(unsigned)
    if unsigned:
        kwargs["anonymous"] = True
    elif creds is not None:
        kwargs.update(access_key=creds.access_key, secret_key=creds.secret_key, session_token=creds.token)
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**kwargs)


def storage_options_for_polars(*, endpoint_url: str | None = None, region: str | None = None) -> dict[str, str]:
    """``storage_options`` for ``polars.read_parquet("s3://…")`` from the same chain and endpoint."""
    endpoint_url = endpoint_url or endpoint_from_env()
    options = {"aws_region": region or boto3.Session().region_name or DEFAULT_REGION}
    creds = _resolved_credentials(False)
    if creds is not None:
        options.update(aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key)
        if creds.token:
            options["aws_session_token"] = creds.token
    if endpoint_url:
        options["aws_endpoint_url"] = endpoint_url
        if endpoint_url.startswith("http://"):
            options["aws_allow_http"] = "true"  # the embedded server speaks plain HTTP on loopback
    return options
