"""S3 access for the client: uploads with server-side encryption, typed errors, polling.

Every botocore error is translated here, once, into the client's exception tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from client.errors import (
    InferenceFailedError,
    InferenceTimeoutError,
    ServiceUnavailableError,
    StorageError,
)
from inference.contract import S3Uri, parse_error_body

SSE = "AES256"
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_RETRYABLE = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "503",
        "500",
    }
)
_HINTS = {
    "AccessDenied": "check that your credentials may read/write this bucket and prefix",
    "403": "check that your credentials may read/write this bucket and prefix",
    "NoSuchBucket": "create the bucket or fix the S3 prefix",
}
T = TypeVar("T")


def translate(exc: Exception, *, action: str) -> StorageError:
    """Turn a botocore exception into a :class:`StorageError` (or its retryable subclass)."""
    if isinstance(exc, BotoConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return ServiceUnavailableError(
            f"{action}: service unreachable ({exc}); retry later or"
            " check the endpoint URL / network"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code in _RETRYABLE:
            return ServiceUnavailableError(f"{action}: {code}: {message}; retry later")
        hint = _HINTS.get(code)
        return StorageError(f"{action}: {code}: {message}" + (f"; {hint}" if hint else ""))
    return StorageError(f"{action}: {exc}")


def _call(action: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, action=action) from exc


def _is_not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND


@dataclass
class S3Storage:
    """Thin, typed wrapper of a boto3 S3 client.

    Attributes:
        client: A boto3 ``s3`` client.
        bytes_uploaded: Running total of bytes put.
        bytes_downloaded: Running total of bytes read.
    """

    client: Any
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0

    def put(
        self, uri: S3Uri, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Upload ``data`` with server-side encryption (SSE-S3)."""
        _call(
            f"uploading {uri}",
            lambda: self.client.put_object(
                Bucket=uri.bucket,
                Key=uri.key,
                Body=data,
                ContentType=content_type,
                ServerSideEncryption=SSE,
            ),
        )
        self.bytes_uploaded += len(data)

    def exists(self, uri: S3Uri) -> bool:
        """HEAD the object: True if it exists."""
        try:
            self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise translate(exc, action=f"checking {uri}") from exc
        except BotoCoreError as exc:
            raise translate(exc, action=f"checking {uri}") from exc
        return True

    def etag(self, uri: S3Uri) -> str:
        """Return the object's ETag (raises :class:`StorageError` when it does not exist)."""
        head = _call(
            f"reading {uri}", lambda: self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        )
        return str(head["ETag"]).strip('"')

    def get(self, uri: S3Uri) -> bytes:
        """Download an object."""
        data = self.get_if_exists(uri)
        if data is None:
            raise StorageError(f"reading {uri}: NoSuchKey: the object does not exist")
        return data

    def get_if_exists(self, uri: S3Uri) -> bytes | None:
        """Download an object, or return None when it does not exist (yet)."""
        try:
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
            data = response["Body"].read()
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise translate(exc, action=f"reading {uri}") from exc
        except BotoCoreError as exc:
            raise translate(exc, action=f"reading {uri}") from exc
        self.bytes_downloaded += len(data)
        return bytes(data)

    def download_file(self, uri: S3Uri, path: Path) -> None:
        """Stream an object to a local file."""
        _call(
            f"downloading {uri}", lambda: self.client.download_file(uri.bucket, uri.key, str(path))
        )
        self.bytes_downloaded += path.stat().st_size

    def delete(self, uris: Iterable[S3Uri]) -> None:
        """Delete objects (missing ones are ignored, as S3 does)."""
        for uri in uris:
            _call(
                f"deleting {uri}",
                lambda u=uri: self.client.delete_object(Bucket=u.bucket, Key=u.key),
            )


@dataclass(frozen=True)
class Backoff:
    """Poll intervals: ``initial`` seconds, times ``factor`` after each poll, capped at ``cap``."""

    initial: float = 0.01
    factor: float = 2.0
    cap: float = 1.0

    def delays(self) -> Iterable[float]:
        """Yield the successive sleep durations forever."""
        delay = self.initial
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)


@dataclass(frozen=True)
class PolledObject:
    """An object found by :func:`wait_for_result`.

    Attributes:
        body: The object's bytes.
        download_seconds: Duration of the successful read alone.
        polls: How many times the output location was tried.
    """

    body: bytes
    download_seconds: float
    polls: int


def wait_for_result(
    storage: S3Storage,
    *,
    output: S3Uri,
    failure: S3Uri | None,
    deadline: float,
    backoff: Backoff,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PolledObject:
    """Poll ``output`` and ``failure`` with get_object until one exists; return the output.

    Args:
        failure: The failure location (None when the endpoint reports none).
        deadline: ``clock()`` value after which to give up.

    Raises:
        InferenceFailedError: the failure object appeared (carries the server's message).
        InferenceTimeoutError: neither appeared before ``deadline``.
        StorageError: S3 itself failed.
    """
    for polls, delay in enumerate(backoff.delays(), start=1):
        started = time.perf_counter()
        data = storage.get_if_exists(output)
        if data is not None:
            return PolledObject(data, time.perf_counter() - started, polls)
        error = None if failure is None else storage.get_if_exists(failure)
        if error is not None:
            status, code, message = parse_error_body(error)
            raise InferenceFailedError(
                message,
                status=status,
                code=code,
                location=str(failure),
                retryable=status is not None and status >= 500,
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise InferenceTimeoutError(
                f"no result at {output} (nor failure at {failure}) before the timeout; the"
                " endpoint may be overloaded, scaled to zero or stopped: raise `timeout` or check"
                " the endpoint's logs"
            )
        sleep(min(delay, remaining))
    raise AssertionError("unreachable")  # pragma: no cover
