"""Shards in object storage (``s3://bucket/...``): listing objects with sizes and ETags, reading one.

The coordinator lists (``list_objects``: sizes and ETags, no data); each worker reads its own
objects straight from the store (``ObjectReader`` for the int64 ops; ``opened_object``, a file of
ranged GETs, for the keyed readers) through the same validating parsers as local files, so a bad
line reads ``s3://b/k.txt:LINE: ...``.  Every worker can read every object, so
after a lost worker the survivors re-read its share with no shared filesystem.

Client: s3fs (fsspec over aiobotocore/botocore).  Why not ``pyarrow.fs.S3FileSystem``: botocore
follows the whole standard AWS chain (environment, shared config and credentials files, profiles,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, SSO, instance roles), while pyarrow 26 ignored
``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` and a config file's ``endpoint_url`` (tried against
the test server); s3fs's listing carries each object's ETag (pyarrow's FileInfo has none), and its
reads send ``If-Match: <ETag>``, so an object rewritten while it is read fails instead of mixing
versions.  Credentials and endpoint come only from each process's own environment, never from a
job message.

Integrity: the listing's ETag and size travel with the shard (``ShardRef``); the reader compares
them with the object it opens, and every ranged GET carries ``If-Match`` on that ETag.

Errors are one line naming the object: bad input, access and credentials are ``InputError`` (exit 2;
a worker lacking credentials the coordinator had is the cluster's fault, exit 1); a store that does
not answer, still throttles after bounded retries (botocore's "standard" mode: exponential backoff
with jitter) or fails with a 5xx is ``StoreUnavailable`` (exit 1).
"""
from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from shardstats.errors import InputError, ShardstatsError, StoreUnavailable
from shardstats.settings import DEFAULTS, Settings
from shardstats.worker.io.listing import SUFFIXES, ShardRef, bookkeeping, expected_types
from shardstats.worker.io.text import parse_text, short_error

_GLOB = "*?["
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "TooManyRequestsException", "RequestThrottled", "ProvisionedThroughputExceededException"}
_ACCESS = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}


def store(settings: Settings = DEFAULTS) -> Any:
    """A fresh client (no listing cache, no shared instance: a listing must see the store as it is now)."""
    try:
        import s3fs
    except ImportError:
        raise InputError("reading s3:// input needs s3fs (pip install 'shardstats[s3]')") from None
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True, use_listings_cache=False,
        config_kwargs={"connect_timeout": settings.s3_connect_timeout, "read_timeout": settings.s3_read_timeout,
                       "retries": {"total_max_attempts": settings.s3_max_attempts, "mode": "standard"}})
    fs.retries = 1      # s3fs's own retry loop off: botocore's standard mode above is the one bounded retry
    return fs


_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()
_MOST_SHARED = 8         # clients kept at once: a process whose AWS environment keeps changing (tests) drops them


def _aws_environment() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def shared_store(settings: Settings = DEFAULTS) -> Any:
    """One client per process, settings and AWS environment: building one (botocore's models, the credential
    chain, the endpoint) costs more than reading a small object -- and than a listing: a coordinator that
    lists for every job (the API's, a benchmark's) took 0.1-0.3 s of CPU a job making fresh ones.  No
    listing cache (``store``), so every listing sees the store as it is now; keyed by the ``AWS_*`` variables,
    so a process whose environment changes gets a client that sees the change."""
    key = (settings, _aws_environment())
    with _shared_lock:
        if key not in _shared:
            if len(_shared) >= _MOST_SHARED:
                _shared.clear()
            _shared[key] = store(settings)
        return _shared[key]


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); the key may be empty or end in ``/``."""
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or any(ch in bucket for ch in _GLOB):
        raise InputError(f"{url}: no bucket named (expected s3://bucket/prefix/, s3://bucket/key or a glob)")
    return bucket, key


# -- listing (the coordinator) ---------------------------------------------------------------------------
def list_objects(url: str, settings: Settings = DEFAULTS,
                 suffixes: tuple[str, ...] | None = SUFFIXES) -> list[ShardRef]:
    """The shard objects ``url`` names: a prefix (``s3://b/p/``, its direct children with a shard suffix,
    like a local directory), one object, or a glob (``s3://b/p/*.npy``, ``**`` for sub-prefixes).

    ``suffixes``: the types a prefix is listed for and an object may have, as for local files
    (``listing.list_refs``: the int64 ops' by default, a keyed op's tables, None for text documents)."""
    bucket, key = split_url(url)
    fs = shared_store(settings)
    with explained(url, settings):
        if any(ch in key for ch in _GLOB):
            found = fs.glob(url, detail=True)
            refs = [_ref(i) for i in found.values() if i.get("type") == "file"]
            if not refs:
                _bucket_exists(fs, bucket, url)
                raise InputError(f"{url}: the pattern matches no objects")
            return _suffixes_ok(sorted(refs, key=lambda r: r.path), suffixes)
        if key and not key.endswith("/"):
            info = _info(fs, url, bucket)
            if info.get("type") == "file":
                return _suffixes_ok([_ref(info)], suffixes)
        return _prefix(fs, url, bucket, suffixes)


def _wanted(name: str, suffixes: tuple[str, ...] | None) -> bool:
    """A prefix's object listed as a shard: not bookkeeping (``listing.bookkeeping``: ``_SUCCESS``, ``.keep``)
    and its suffix one of ``suffixes`` (None: any)."""
    base = PurePosixPath(name)
    if name.endswith("/") or bookkeeping(base.name):
        return False
    return suffixes is None or base.suffix.lower() in suffixes


def _prefix(fs: Any, url: str, bucket: str, suffixes: tuple[str, ...] | None = SUFFIXES) -> list[ShardRef]:
    try:
        entries = fs.ls(url, detail=True)
    except FileNotFoundError as exc:
        if _code(exc) == "NoSuchBucket":
            raise
        _bucket_exists(fs, bucket, url)
        raise InputError(f"{url}: no such object or prefix") from None
    refs = sorted((_ref(e) for e in entries if e.get("type") == "file" and _wanted(e["name"], suffixes)),
                  key=lambda r: r.path)
    if not refs:
        raise InputError(f"{url}: prefix holds no shard objects"
                         f"{'' if suffixes is None else ' (' + expected_types(suffixes)[9:] + ')'}")
    return refs


def _info(fs: Any, url: str, bucket: str) -> dict:
    try:
        return fs.info(url)
    except FileNotFoundError as exc:
        if _code(exc) != "NoSuchBucket":
            _bucket_exists(fs, bucket, url)
            raise InputError(f"{url}: no such object or prefix") from None
        raise


def _bucket_exists(fs: Any, bucket: str, url: str) -> None:
    """Tells "no such bucket" from "no such key" when a listing comes back empty (one HEAD)."""
    try:
        fs.info(f"s3://{bucket}")
    except FileNotFoundError:
        raise InputError(f"{url}: no such bucket {bucket!r}") from None


def _ref(info: dict) -> ShardRef:
    name = info["name"] if info["name"].startswith("s3://") else "s3://" + info["name"]
    etag = info.get("ETag") or info.get("etag")
    return ShardRef(name, int(info["size"]), str(etag) if etag else None)


def _suffixes_ok(refs: list[ShardRef], suffixes: tuple[str, ...] | None = SUFFIXES) -> list[ShardRef]:
    wrong = [] if suffixes is None else [r.path for r in refs
                                         if PurePosixPath(r.path).suffix.lower() not in suffixes]
    if wrong:
        raise InputError(f"{wrong[0]}: unsupported file type ({expected_types(suffixes)})")
    return refs


# -- reading (a worker) ------------------------------------------------------------------------------------
class ObjectReader:
    """Reads a job's objects on one worker with the worker's client (made on first use)."""

    def __init__(self, settings: Settings = DEFAULTS, fs: Any = None) -> None:
        self.settings = settings
        self._fs: Any = fs

    def read(self, ref: ShardRef, column: str | int | None = None, header: bool | None = None,
             budget: int | None = None) -> np.ndarray:
        """The object's int64 values; one larger than ``budget`` (bytes: a worker's memory left) is refused
        before it is fetched."""
        _fits(ref, budget)
        suffix = PurePosixPath(ref.path).suffix.lower()
        if suffix not in SUFFIXES:
            raise InputError(f"{ref.path}: unsupported file type {suffix or '(none)'!r} ({expected_types(SUFFIXES)})")
        with explained(ref.path, self.settings, on_worker=True):
            if self._fs is None:
                self._fs = shared_store(self.settings)
            # Opening HEADs the object; its ETag then rides every ranged GET as If-Match.
            with _open(self._fs, ref.path) as f:
                _same_version(ref, f.details)
                if suffix == ".parquet":
                    from shardstats.worker.io.columns import read_parquet
                    return read_parquet(f, column, ref.path, store_error=is_store_error)
                raw = f.read()
        if ref.size >= 0 and len(raw) != ref.size:
            raise InputError(f"{ref.path}: changed since the job listed it ({ref.size} bytes listed, "
                             f"{len(raw)} read)")
        if suffix == ".txt":
            return parse_text(raw, ref.path)
        if suffix == ".csv":
            from shardstats.worker.io.columns import parse_csv
            return parse_csv(raw, column, ref.path, header)
        from shardstats.worker.io.shards import load_npy
        return load_npy(io.BytesIO(raw), ref.path)


def _fits(ref: ShardRef, budget: int | None) -> None:
    """Refuses, before any byte is fetched, an object larger than ``budget`` (bytes: a worker's memory left)."""
    if budget is not None and ref.size > budget:
        from shardstats.worker.io.source import mib
        raise InputError(f"{ref.path}: {mib(ref.size)} does not fit the worker's memory budget of "
                         f"{mib(budget)} (--memory-limit); split the shard into smaller objects")


@contextmanager
def opened_object(ref: ShardRef, budget: int | None = None,
                  settings: Settings = DEFAULTS) -> Iterator[tuple[Any, int]]:
    """The object as a seekable binary file and its size, for the keyed readers (``worker.data.readers``
    through ``worker.io.source.opened``): each read is one ranged GET of what the reader asks for (no
    read-ahead), so Parquet fetches its footer and the chunks of the columns it needs and a text file
    arrives a block at a time.  The listed version is checked at the open and rides every GET
    (If-Match); the store's errors inside the block come out as one line naming the object."""
    _fits(ref, budget)
    with explained(ref.path, settings, on_worker=True):
        # cache_type "none": s3fs's default read-ahead (50 MiB blocks) would fetch the columns a Parquet
        # reader skips and hold a block beside the batch the reader keeps
        with _open(shared_store(settings), ref.path, cache_type="none") as f:
            _same_version(ref, f.details)
            yield f, int(f.details.get("size", ref.size))


def _open(fs: Any, path: str, **kw: Any) -> Any:
    """``fs.open`` for reading, its refusal said with the store's reason: opening HEADs the object, and a HEAD's
    403 has no body, so wrong credentials and a missing permission look alike; one GET of a byte brings the
    error code that tells them apart (the credentials: the cluster's fault on a worker; a permission: the input's)."""
    try:
        return fs.open(path, "rb", **kw)
    except PermissionError:
        try:
            fs.cat_file(path, start=0, end=1)
        except OSError as why:
            if _code(why) is not None:
                raise why           # its __cause__ is botocore's error, the code explain() reads
        raise


def is_store_error(exc: BaseException) -> bool:
    """Whether a reader's exception came from the store (a changed object, a refusal, a store that does not
    answer), to be explained as such rather than called an unreadable file."""
    from s3fs.utils import FileExpired
    return isinstance(exc, FileExpired) or _client_error(exc) is not None


def _same_version(ref: ShardRef, details: dict) -> None:
    etag = details.get("ETag")
    if ref.version is not None and etag is not None and etag != ref.version:
        raise InputError(f"{ref.path}: changed since the job listed it (ETag {ref.version} listed, {etag} now)")
    size = details.get("size")
    if ref.size >= 0 and size is not None and int(size) != ref.size:
        raise InputError(f"{ref.path}: changed since the job listed it ({ref.size} bytes listed, {size} now)")


# -- errors --------------------------------------------------------------------------------------------------
@contextmanager
def explained(where: str, settings: Settings = DEFAULTS, on_worker: bool = False) -> Iterator[None]:
    """The store's exceptions (s3fs's OSErrors, botocore's errors) as one line naming ``where``."""
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        yield
    except ShardstatsError:
        raise
    except (OSError, BotoCoreError, ClientError) as exc:
        raise explain(exc, where, settings, on_worker) from None


def _client_error(exc: BaseException) -> Any:
    """The botocore error behind ``exc`` (s3fs keeps it as ``__cause__``), or None."""
    from botocore.exceptions import BotoCoreError, ClientError
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        if isinstance(e, (ClientError, BotoCoreError)):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _code(exc: BaseException) -> str | None:
    err = _client_error(exc)
    return getattr(err, "response", {}).get("Error", {}).get("Code") if err is not None else None


def explain(exc: BaseException, where: str, settings: Settings = DEFAULTS,
            on_worker: bool = False) -> ShardstatsError:
    from botocore import exceptions as bx
    from s3fs.utils import FileExpired
    tries = settings.s3_max_attempts
    if isinstance(exc, FileExpired):
        return InputError(f"{where}: changed since the job listed it (the store refused the listed ETag)")
    err = _client_error(exc)
    if isinstance(err, bx.ClientError):
        meta = err.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        code = str(err.response.get("Error", {}).get("Code") or status)
        msg = str(err.response.get("Error", {}).get("Message") or "").splitlines()[0:1]
        detail = f"HTTP {status}" if code.isdigit() else f"{code}: {msg[0][:100]}" if msg and msg[0] else code
        attempts = int(meta.get("RetryAttempts") or 0) + 1
        if code == "PreconditionFailed" or status == 412:
            return InputError(f"{where}: changed since the job listed it (the store refused the listed ETag)")
        if code == "NoSuchBucket":
            return InputError(f"{where}: no such bucket {where[5:].split('/', 1)[0]!r}")
        if code in ("NoSuchKey", "404") or status == 404:
            return InputError(f"{where}: no such object")
        if code in _CREDENTIALS:
            if on_worker:
                return StoreUnavailable(f"{where}: the store refused this worker's credentials ({code}); workers "
                                        f"read with their own AWS environment")
            return InputError(f"{where}: the store refused the credentials ({code}); check AWS_ACCESS_KEY_ID, "
                              f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        if code in _ACCESS or status == 403:
            return InputError(f"{where}: access denied ({detail})")
        if code in _THROTTLED or status in (429, 503):
            return StoreUnavailable(f"{where}: the store is throttling requests ({code}) and still was after "
                                    f"{attempts} attempts")
        if status >= 500:
            return StoreUnavailable(f"{where}: the store failed ({detail}) after {attempts} attempts")
        return InputError(f"{where}: the store refused the request ({detail})")
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        if on_worker:
            return StoreUnavailable(f"{where}: this worker has no S3 credentials ({short_error(err)}); workers read "
                                    f"with their own AWS environment")
        return InputError(f"{where}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          f"AWS_PROFILE, or a shared credentials file)")
    if isinstance(err, (bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.EndpointConnectionError,
                        bx.ConnectionClosedError)):
        return StoreUnavailable(f"{where}: the store does not answer ({short_error(err)}; {tries} attempts)")
    if isinstance(err, bx.BotoCoreError):
        return StoreUnavailable(f"{where}: the store client failed ({short_error(err)})")
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{where}: no such object")
    if isinstance(exc, PermissionError):
        return InputError(f"{where}: access denied")
    return StoreUnavailable(f"{where}: cannot read from the store ({short_error(exc)})")
