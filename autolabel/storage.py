"""One small storage interface over local files and S3-compatible object stores.

Used by the worker (images, manifests, results) and by the operator (manifest preconditions, progress).
A URI is either ``s3://bucket/key`` or a local path (``file://`` is accepted and stripped); a Storage made
with ``StorageConfig(local_paths=False)`` (the operator's) serves s3:// only and refuses local paths
(:class:`LocalPathRefused`) before touching the filesystem.

S3 access goes through one boto3 client (thread-safe) with botocore's "standard" retry mode, which
retries throttling and 5xx answers. Connection-level failures (endpoint down, DNS, resets, time-outs), and
5xx answers that outlast botocore's retries (a store restarting), are retried here with exponential backoff
and jitter; when those run out the call raises
:class:`StorageUnreachable`, so callers can tell "the store is down" from "the object is missing".
Path-style addressing is used whenever an endpoint URL is set, which is what MinIO and most
self-hosted stores need.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import random
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_SCHEME = "s3://"
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


# ------------------------------------------------------------------------------------------ errors


class StorageError(Exception):
    """A storage operation failed. ``uri`` names the object; ``str()`` names the object and the cause."""

    def __init__(self, uri: str, cause: str):
        super().__init__(f"{uri}: {cause}")
        self.uri = uri
        self.cause = cause


class ObjectNotFound(StorageError):
    """The object (or its bucket) does not exist."""


class StorageUnreachable(StorageError):
    """The store could not be reached, after retries with backoff were exhausted."""


class UnsupportedURI(StorageError, ValueError):
    """A URI with a scheme other than s3:// or file:// (or a plain path)."""


class LineTooLong(StorageError):
    """A text line longer than ``StorageConfig.max_line_bytes`` (a manifest that is not JSON Lines, or one
    line holding a whole dataset): reading stops there instead of buffering the line."""

    def __init__(self, uri: str, line_no: int, limit: int):
        super().__init__(uri, f"line {line_no} is longer than {limit:,} bytes (the limit for one line)")
        self.line_no = line_no
        self.limit = limit


class LocalPathRefused(UnsupportedURI):
    """A local path (or ``file://``) given to a Storage that serves s3:// URIs only
    (``StorageConfig.local_paths=False``)."""


# ------------------------------------------------------------------------------------------ config


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


# ------------------------------------------------------------------------------------------ boto3


class _SharedSession:
    """One boto3 session for the whole process, for every client it makes. Each session loads the model
    files of the services it makes clients for, and the endpoint data they share (a client from a new
    session: 63-129 ms of CPU, about 11 MiB of Python objects for S3; from a warm session: 16 ms); the
    operator's S3 and STS clients each had a session of their own. Sessions are not thread-safe, so clients
    are made under a lock (the clients themselves are)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._lock = threading.Lock()

    def client(self, service: str, **kwargs: Any) -> Any:
        import boto3

        with self._lock:
            if self._session is None:
                self._session = boto3.session.Session()
            return self._session.client(service, **kwargs)

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork


_BOTO3 = _SharedSession()
os.register_at_fork(after_in_child=_BOTO3.after_fork)


def boto3_client(service: str, **kwargs: Any) -> Any:
    """A new boto3 client for ``service`` from the process's one session (see :class:`_SharedSession`)."""
    return _BOTO3.client(service, **kwargs)


@dataclass(frozen=True)
class StorageConfig:
    """Where and how to reach the object store. ``None`` fields fall back to the environment."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    """With temporary credentials (STS): the session token that goes with the keys."""
    max_attempts: int = 5
    """botocore standard-mode attempts per request (throttling, 5xx)."""
    connect_retries: int = 6
    """Extra attempts, with backoff, after connection errors (endpoint down, resets, time-outs)."""
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_line_bytes: int = 1 << 20
    """The longest text line :meth:`Storage.iter_lines` reads (:class:`LineTooLong` beyond it), so that a
    huge line costs this much memory, not the object's size."""
    local_paths: bool = True
    """Serve local paths (plain or ``file://``) from this machine's filesystem; False (the operator, which
    must never open its own files for a user's job) refuses them with :class:`LocalPathRefused`."""

    @classmethod
    def from_env(cls) -> StorageConfig:
        return cls(
            endpoint_url=_env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=_env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            access_key=_env("AWS_ACCESS_KEY_ID"),
            secret_key=_env("AWS_SECRET_ACCESS_KEY"),
            session_token=_env("AWS_SESSION_TOKEN"),
        )

    def resolved(self) -> StorageConfig:
        """This config with every unset connection field taken from the environment."""
        env = StorageConfig.from_env()
        return StorageConfig(
            endpoint_url=self.endpoint_url or env.endpoint_url,
            region=self.region or env.region,
            access_key=self.access_key or env.access_key,
            secret_key=self.secret_key or env.secret_key,
            # The environment's token only goes with the environment's keys.
            session_token=self.session_token or (None if self.access_key else env.session_token),
            max_attempts=self.max_attempts,
            connect_retries=self.connect_retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_line_bytes=self.max_line_bytes,
            local_paths=self.local_paths,
        )


# -------------------------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty (a bucket or prefix)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (plain path or ``file://``)."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if _SCHEME_RE.match(uri):
        raise UnsupportedURI(uri, "unsupported URI scheme (use s3:// or a local path)")
    return uri


def uri_scheme(uri: str) -> str | None:
    """``"s3://"``, ``"file://"``, ``"https://"``, … or None for a plain path."""
    match = _SCHEME_RE.match(uri)
    return match.group(0) if match else None


def is_absolute_uri(uri: str) -> bool:
    return bool(_SCHEME_RE.match(uri)) or os.path.isabs(uri)


def join_uri(base: str, relative: str) -> str:
    """Resolve ``relative`` against the folder of ``base`` (a file URI) or ``base`` itself (ends in ``/``).

    This is how a manifest's relative ``source`` is resolved against the manifest's folder. Absolute
    sources (``s3://…``, ``/…``) are returned unchanged; ``.`` and ``..`` segments are normalised.
    """
    if is_absolute_uri(relative):
        return relative
    if is_s3(base):
        bucket, key = split_s3(base)
        folder = key if key.endswith("/") else posixpath.dirname(key)
        joined = posixpath.normpath(posixpath.join(folder, relative))
        if joined == ".." or joined.startswith("../"):
            raise ValueError(f"{relative!r} escapes the bucket of {base!r}")
        return f"{S3_SCHEME}{bucket}/{joined}"
    path = local_path(base)
    folder = path if path.endswith(("/", os.sep)) else os.path.dirname(path)
    return os.path.normpath(os.path.join(folder, relative))


def _normalise(uri: str) -> str:
    """A canonical form used to compare URIs (protected objects, scope checks)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"{S3_SCHEME}{bucket}/{posixpath.normpath(key) if key else ''}"
    return os.path.realpath(local_path(uri))


# ------------------------------------------------------------------------------------------ storage


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = ()
_CLIENT_ERROR: type[BaseException] = Exception
_NO_CREDENTIALS: tuple[type[BaseException], ...] = ()


def _botocore_errors() -> None:
    """Import botocore's exception classes once (botocore is heavy; the CLI's --help need not pay)."""
    global _CONNECTION_ERRORS, _CLIENT_ERROR, _NO_CREDENTIALS
    if _CONNECTION_ERRORS:
        return
    from botocore import exceptions as bex

    _CONNECTION_ERRORS = (
        bex.EndpointConnectionError,  # includes ConnectTimeoutError's connection family
        bex.ConnectionClosedError,
        bex.ConnectTimeoutError,
        bex.ReadTimeoutError,
        bex.ResponseStreamingError,
        bex.IncompleteReadError,
        bex.ProxyConnectionError,
        ConnectionError,
        TimeoutError,
    )
    _CLIENT_ERROR = bex.ClientError
    _NO_CREDENTIALS = (bex.NoCredentialsError, bex.PartialCredentialsError)


_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
# Answers about the store's state, not the object: retried like a connection error. MinIO answers a
# request it was serving when told to stop with 499 ClientDisconnected (seen in the outage test, 1 run
# in 18 under load: 3 images were skipped as unreadable before this); 408 and 429 are timeouts and
# throttling.
_TRANSIENT_STATUSES = {"408", "429", "499"}
_TRANSIENT_CODES = {"ClientDisconnected", "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException"}


class Storage:
    """One object for both local paths and s3:// URIs (boto3 client, retries with backoff)."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = (config or StorageConfig()).resolved()
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._protected: set[str] = set()
        self._sleep: Callable[[float], None] = time.sleep  # tests replace this to skip real waiting

    # ------------------------------------------------------------------ protection of inputs

    def protect(self, uri: str) -> None:
        """Refuse every later write to ``uri`` (the input manifest): the product never overwrites it."""
        self._protected.add(_normalise(uri))

    def _check_writable(self, uri: str) -> None:
        if _normalise(uri) in self._protected:
            raise ValueError(f"refusing to overwrite {uri}: it is an input of this job (the dataset manifest)")

    def _local(self, uri: str, what: str) -> str:
        """The filesystem path of a local ``uri``, unless this Storage serves s3:// only: then
        :class:`LocalPathRefused`, before anything on the filesystem is looked at."""
        path = local_path(uri)  # other schemes: UnsupportedURI
        if not self.config.local_paths:
            raise LocalPathRefused(uri, f"cannot {what}: a local path, and this storage serves s3:// URIs only")
        return path

    # ------------------------------------------------------------------ S3 plumbing

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (boto3 clients are thread-safe, sessions are not)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def after_fork(self) -> None:
        """In a forked child: forget the parent's client (its pooled connections are the parent's
        sockets) and its lock (which another thread of the parent may have held at the fork)."""
        self._client = None
        self._client_lock = threading.Lock()

    def _make_client(self) -> Any:
        from botocore.config import Config

        cfg = self.config
        s3_options = {"addressing_style": "path"} if cfg.endpoint_url else {}
        botocfg = Config(
            retries={"mode": "standard", "max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            max_pool_connections=64,
            s3=s3_options,
        )
        return boto3_client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key,
            aws_secret_access_key=cfg.secret_key,
            aws_session_token=cfg.session_token,
            config=botocfg,
        )

    def _call(self, uri: str, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 call; retry connection errors and 5xx answers with backoff; map errors to StorageError
        types."""
        _botocore_errors()
        attempts = self.config.connect_retries + 1
        for attempt in range(attempts):
            try:
                return fn()
            except _CONNECTION_ERRORS as exc:
                if attempt + 1 >= attempts:
                    where = self.config.endpoint_url or "the S3 endpoint"
                    raise StorageUnreachable(
                        uri, f"cannot {what}: {where} unreachable after {attempts} attempts ({exc})"
                    ) from exc
                delay = min(self.config.backoff_max, self.config.backoff_base * 2**attempt)
                delay *= random.uniform(0.5, 1.0)
                log.warning("%s: %s failed (%s); retrying in %.1fs", uri, what, exc, delay)
                self._sleep(delay)
            except _NO_CREDENTIALS as exc:
                raise StorageError(uri, f"cannot {what}: no credentials ({exc})") from exc
            except _CLIENT_ERROR as exc:
                error = self._map_client_error(uri, what, exc)
                if not isinstance(error, StorageUnreachable) or attempt + 1 >= attempts:
                    raise error from exc
                # 5xx (a store restarting or overloaded; botocore's own retries may be spent, its retry
                # quota drained by an outage): backed off like a connection error, not given up at once.
                delay = min(self.config.backoff_max, self.config.backoff_base * 2**attempt)
                delay *= random.uniform(0.5, 1.0)
                log.warning("%s: %s failed (%s); retrying in %.1fs", uri, what, error.cause, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _map_client_error(uri: str, what: str, exc: BaseException) -> StorageError:
        response = getattr(exc, "response", {}) or {}
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        message = error.get("Message") or code or str(exc)
        if code in _NOT_FOUND_CODES or status == "404":
            if code == "NoSuchBucket":
                return ObjectNotFound(uri, f"cannot {what}: the bucket does not exist")
            return ObjectNotFound(uri, f"cannot {what}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == "403":
            return StorageError(uri, f"cannot {what}: access denied ({code}: {message}); check the credentials")
        if status.startswith("5") or status in _TRANSIENT_STATUSES or code in _TRANSIENT_CODES:
            # botocore's standard mode has already retried 5xx and throttling; a store that keeps answering
            # them (overloaded, restarting, or down behind a proxy) is unreachable for our purposes.
            return StorageUnreachable(uri, f"cannot {what}: the store keeps failing ({status} {code}: {message})")
        return StorageError(uri, f"cannot {what}: {code or status}: {message}")

    # ------------------------------------------------------------------ reads

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)

            def get() -> bytes:
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
                try:
                    return bytes(body.read())
                finally:
                    body.close()

            return self._call(uri, "read", get)
        path = self._local(uri, "read")
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise ObjectNotFound(uri, "cannot read: no such file") from exc
        except IsADirectoryError as exc:
            raise StorageError(uri, "cannot read: is a directory") from exc
        except OSError as exc:
            raise StorageError(uri, f"cannot read: {exc.strerror or exc}") from exc

    def iter_lines(self, uri: str) -> Iterator[str]:
        """The object's text lines (UTF-8, BOM dropped, line ends stripped), streamed.

        Memory does not grow with the object. On S3 a connection lost mid-stream resumes with a
        ranged GET from the last complete line (bounded by the connection retries).
        """
        if not is_s3(uri):
            path = self._local(uri, "read")
            try:
                fh = open(path, encoding="utf-8-sig", newline=None)  # noqa: SIM115 (generator owns it)
            except FileNotFoundError as exc:
                raise ObjectNotFound(uri, "cannot read: no such file") from exc
            except OSError as exc:
                raise StorageError(uri, f"cannot read: {exc.strerror or exc}") from exc
            limit = self.config.max_line_bytes
            with fh:
                line_no = 0
                try:
                    while line := fh.readline(limit + 1):
                        line_no += 1
                        if len(line) > limit and not line.endswith("\n"):  # characters: bytes >= characters
                            raise LineTooLong(uri, line_no, limit)
                        yield line.rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise StorageError(uri, f"cannot read: not UTF-8 text ({exc.reason})") from exc
            return
        yield from self._iter_s3_lines(uri)

    def _iter_s3_lines(self, uri: str) -> Iterator[str]:
        _botocore_errors()
        bucket, key = split_s3(uri)
        offset = 0  # bytes of complete lines already yielded
        failures = 0
        first = True
        line_no = 0
        limit = self.config.max_line_bytes
        while True:
            extra = {"Range": f"bytes={offset}-"} if offset else {}
            get = functools.partial(self.client.get_object, Bucket=bucket, Key=key, **extra)
            response = self._call(uri, "read", get)
            body = response["Body"]
            pending = b""
            try:
                for chunk in body.iter_chunks(chunk_size=1 << 16):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        offset += len(raw) + 1
                        line_no += 1
                        if first:
                            raw = raw.removeprefix(b"\xef\xbb\xbf")
                            first = False
                        if len(raw) > limit:
                            raise LineTooLong(uri, line_no, limit)
                        yield self._decode_line(uri, raw, line_no)
                    if len(pending) > limit:
                        raise LineTooLong(uri, line_no + 1, limit)
            except _CONNECTION_ERRORS as exc:
                failures += 1
                if failures > self.config.connect_retries:
                    raise StorageUnreachable(uri, f"cannot read: connection lost {failures} times ({exc})") from exc
                log.warning("%s: connection lost at byte %d (%s); resuming", uri, offset, exc)
                self._sleep(min(self.config.backoff_max, self.config.backoff_base * 2 ** (failures - 1)))
                continue
            finally:
                body.close()
            if pending:
                if first:
                    pending = pending.removeprefix(b"\xef\xbb\xbf")
                yield self._decode_line(uri, pending, line_no + 1)
            return

    @staticmethod
    def _decode_line(uri: str, raw: bytes, line_no: int) -> str:
        try:
            return raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise StorageError(uri, f"cannot read line {line_no}: not UTF-8 text ({exc.reason})") from exc

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self._call(uri, "check", lambda: self.client.head_object(Bucket=bucket, Key=key))
            except ObjectNotFound:
                return False
            return True
        return os.path.exists(self._local(uri, "check"))

    def list(self, prefix: str) -> Iterator[str]:
        """Every object whose URI starts with ``prefix`` (a folder when it ends in ``/``), sorted on S3."""
        if is_s3(prefix):
            bucket, key_prefix = split_s3(prefix)
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self._call(prefix, "list", functools.partial(self.client.list_objects_v2, **kwargs))
                for item in page.get("Contents", []):
                    yield f"{S3_SCHEME}{bucket}/{item['Key']}"
                if not page.get("IsTruncated"):
                    return
                token = page.get("NextContinuationToken")
        path = self._local(prefix, "list")
        if os.path.isdir(path):
            root, name_prefix = path, ""
        else:
            root, name_prefix = os.path.dirname(path) or ".", os.path.basename(path)
        if not os.path.isdir(root):
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if os.path.relpath(full, root).startswith(name_prefix):
                    yield "file://" + full if prefix.startswith("file://") else full

    def fetch_many(self, uris: Iterable[str], max_workers: int = 16) -> Iterator[tuple[str, bytes | StorageError]]:
        """Read many objects concurrently; yields ``(uri, bytes or the error)`` in input order.

        At most ``2 * max_workers`` reads are in flight or waiting to be yielded, so memory stays bounded
        however long ``uris`` is (it is consumed lazily). Closing the iterator early cancels the rest.
        """
        max_workers = max(1, max_workers)
        window = 2 * max_workers

        def read(uri: str) -> bytes | StorageError:
            try:
                return self.read_bytes(uri)
            except StorageError as exc:
                return exc

        pending: deque[tuple[str, Future[bytes | StorageError]]] = deque()
        executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="storage-fetch")
        try:
            for uri in uris:
                pending.append((uri, executor.submit(read, uri)))
                if len(pending) >= window:
                    done_uri, future = pending.popleft()
                    yield done_uri, future.result()
            while pending:
                done_uri, future = pending.popleft()
                yield done_uri, future.result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ writes

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write an object whole: readers see the old content or the new one, never a part."""
        self._check_writable(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._call(uri, "write", lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))
            return
        path = self._local(uri, "write")
        self._atomic_local_write(uri, path, lambda fh: fh.write(data))

    def upload_file(self, local_file: str, uri: str) -> None:
        """Copy a (large) local file to ``uri``: multipart on S3, temp file + rename locally."""
        self._check_writable(uri)
        if not os.path.isfile(local_file):
            raise StorageError(local_file, "cannot upload: no such file")
        if is_s3(uri):
            from boto3.s3.transfer import TransferConfig

            bucket, key = split_s3(uri)
            transfer = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20)
            from boto3.exceptions import S3UploadFailedError

            def upload() -> None:
                try:
                    self.client.upload_file(local_file, bucket, key, Config=transfer)
                except S3UploadFailedError as exc:
                    # boto3 wraps the ClientError (implicitly chained); unwrap it so that it is mapped
                    # like every other call's (not found, access denied, ...).
                    inner = exc.__cause__ or exc.__context__
                    if isinstance(inner, _CLIENT_ERROR):
                        raise inner from None
                    raise StorageError(uri, f"cannot upload: {exc}") from exc

            self._call(uri, "upload", upload)
            return
        path = self._local(uri, "write")

        def copy(fh: Any) -> None:
            with open(local_file, "rb") as src:
                while chunk := src.read(1 << 20):
                    fh.write(chunk)

        self._atomic_local_write(uri, path, copy)

    @staticmethod
    def _atomic_local_write(uri: str, path: str, fill: Callable[[Any], Any]) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
        except OSError as exc:
            raise StorageError(uri, f"cannot write: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise StorageError(uri, f"cannot write: {exc.strerror or exc}") from exc
            raise


# ------------------------------------------------------------------------------------- scoped writer


class ScopedWriter:
    """Writes only below one prefix (a job's results folder); refuses (ValueError) anything else.

    Keys are relative (``"summary.json"``, ``"model/model.pt"``); absolute keys, URIs, ``..`` segments
    and empty segments are refused, and so is any protected URI (the input manifest).
    """

    def __init__(self, storage: Storage, prefix: str, protected: Iterable[str] = ()):
        if not prefix:
            raise ValueError("a ScopedWriter needs a non-empty prefix")
        self.storage = storage
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        if not is_s3(self.prefix):
            self.prefix = os.path.abspath(local_path(self.prefix)) + os.sep
        self._protected = {_normalise(uri) for uri in protected}

    def _checked_parts(self, relative_key: str) -> list[str]:
        key = relative_key
        if not key or key.startswith(("/", "\\")) or _SCHEME_RE.match(key) or os.path.isabs(key):
            raise ValueError(f"refusing to write {relative_key!r}: keys must be relative to {self.prefix}")
        parts = key.split("/")
        if any(part in ("", ".", "..") or "\\" in part for part in parts):
            raise ValueError(f"refusing to write {relative_key!r}: it escapes or is not inside {self.prefix}")
        return parts

    def uri(self, relative_key: str) -> str:
        """The full URI of ``relative_key`` below the prefix (validated)."""
        parts = self._checked_parts(relative_key)
        if is_s3(self.prefix):
            full = self.prefix + "/".join(parts)
        else:
            full = os.path.join(self.prefix, *parts)
            # A symlink inside the prefix must not lead the write elsewhere.
            root = os.path.realpath(self.prefix)
            if not os.path.realpath(full).startswith(root + os.sep):
                raise ValueError(f"refusing to write {relative_key!r}: it resolves outside {self.prefix}")
        if _normalise(full) in self._protected:
            raise ValueError(f"refusing to overwrite {full}: it is an input of this job")
        return full

    def write_bytes(self, relative_key: str, data: bytes) -> None:
        self.storage.write_bytes(self.uri(relative_key), data)

    def upload_file(self, local_path: str, relative_key: str) -> None:
        self.storage.upload_file(local_path, self.uri(relative_key))

    def scoped(self, sub_prefix: str) -> ScopedWriter:
        """A writer for a sub-folder (e.g. ``shards/2/``), keeping this writer's protections."""
        parts = self._checked_parts(sub_prefix.rstrip("/"))
        child = ScopedWriter(self.storage, self.prefix + "/".join(parts) + "/")
        child._protected = set(self._protected)
        return child
