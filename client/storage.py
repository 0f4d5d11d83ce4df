"""S3 access for the client: uploads with server-side encryption, typed errors, polling.

Every botocore error is translated here, once, into the client's exception tree.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from client.errors import (
    InferenceFailedError,
    InferenceTimeoutError,
    ServiceUnavailableError,
    StorageError,
)
from common.contract import is_retryable, parse_error_body
from common.s3_access import SSE_ALGORITHM, S3Failure, classify, error_code
from common.s3_location import S3Uri

_HINTS = {
    S3Failure.DENIED: "check that your credentials may read/write this bucket and prefix",
    S3Failure.NO_BUCKET: "create the bucket or fix the S3 prefix",
}
T = TypeVar("T")


def translate(exc: Exception, *, action: str) -> StorageError:
    """Turn a botocore exception into a :class:`StorageError` (or its retryable subclass).

    The kinds of failure are :func:`common.s3_access.classify`'s (also for sagemaker-runtime).
    """
    kind = classify(exc)
    if not isinstance(exc, ClientError):
        if kind is S3Failure.RETRY_LATER:
            return ServiceUnavailableError(
                f"{action}: service unreachable ({exc}); retry later or"
                " check the endpoint URL / network"
            )
        return StorageError(f"{action}: {exc}")
    code = error_code(exc)
    message = exc.response.get("Error", {}).get("Message", str(exc))
    if kind is S3Failure.RETRY_LATER:
        return ServiceUnavailableError(f"{action}: {code}: {message}; retry later")
    hint = _HINTS.get(kind)
    return StorageError(f"{action}: {code}: {message}" + (f"; {hint}" if hint else ""))


def _call(action: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, action=action) from exc


def _is_not_found(exc: ClientError) -> bool:
    return classify(exc) is S3Failure.NOT_FOUND


def _call_unless_missing(action: str, fn: Callable[[], T]) -> T | None:
    """Like :func:`_call`, but a missing object (404) gives None instead of an error."""
    try:
        return fn()
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise translate(exc, action=action) from exc
    except BotoCoreError as exc:
        raise translate(exc, action=action) from exc


@dataclass
class S3Storage:
    """Thin, typed wrapper of a boto3 S3 client; safe to share between threads.

    Attributes:
        client: A boto3 ``s3`` client.
        bytes_uploaded: Running total of bytes put.
        bytes_downloaded: Running total of bytes read.
    """

    client: Any
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _count(self, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.bytes_uploaded += up
            self.bytes_downloaded += down

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
                ServerSideEncryption=SSE_ALGORITHM,
            ),
        )
        self._count(up=len(data))

    def exists(self, uri: S3Uri) -> bool:
        """HEAD the object: True if it exists."""
        head = _call_unless_missing(
            f"checking {uri}", lambda: self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        )
        return head is not None

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
        data = _call_unless_missing(
            f"reading {uri}",
            lambda: self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read(),
        )
        if data is None:
            return None
        self._count(down=len(data))
        return bytes(data)

    def download_file(self, uri: S3Uri, path: Path) -> None:
        """Stream an object to a local file."""
        _call(
            f"downloading {uri}", lambda: self.client.download_file(uri.bucket, uri.key, str(path))
        )
        self._count(down=path.stat().st_size)

    def delete(self, uris: Iterable[S3Uri]) -> None:
        """Delete objects, one ``DeleteObjects`` call per bucket (missing ones are ignored)."""
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for uri in uris:
            by_bucket[uri.bucket].append(uri.key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):  # the API's limit per call
                chunk = [{"Key": key} for key in keys[start : start + 1000]]
                response = _call(
                    f"deleting {len(chunk)} object(s) in s3://{bucket}",
                    lambda c=chunk, b=bucket: self.client.delete_objects(
                        Bucket=b, Delete={"Objects": c, "Quiet": True}
                    ),
                )
                errors = response.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"deleting s3://{bucket}/{first.get('Key')}: {first.get('Code')}:"
                        f" {first.get('Message')} ({len(errors)} object(s) not deleted)"
                    )


@dataclass(frozen=True)
class Backoff:
    """When to poll for an async result.

    Every poll costs an S3 request and client CPU, and (in local mode, or with the client on
    the endpoint's machine) CPU taken from the FHE run it waits for: polling every 5 ms slowed
    a concurrent FHE run by 32 %, every 25 ms by 9-11 %, every 50 ms by 6-8 %, every 100 ms by
    5 % (measured on 2 cores, the S3 server on the same cores). So:

    * without an estimate of when the result will be ready, the next poll comes ``ratio`` x the
      time waited so far later (at least ``initial``, at most ``cap`` seconds): a result is
      picked up at most ~5 % late;
    * with an ``expected`` duration (learned from earlier requests: the fastest recent one, so
      results rarely come earlier), polls are sparse until ``lead`` x expected (every
      ``sparse_ratio`` x waited — doubling intervals — and at least ``sparse_min`` apart: quick
      failures still surface quickly), dense around it (every ``near`` x expected) and
      proportional again once the result is overdue (``late`` x expected). For a 2 s run that
      is 7 polls before 1.9 s instead of 15 with quarter steps until 85 %.

    The failure location is read on every ``failure_every``-th poll only (and before giving up):
    failures are rare, and reading both on every poll would double the S3 round trips.
    """

    initial: float = 0.005
    ratio: float = 0.05
    cap: float = 1.0
    failure_every: int = 4
    lead: float = 0.95
    near: float = 0.02
    late: float = 1.25
    sparse_ratio: float = 1.0
    sparse_min: float = 0.05

    def __post_init__(self) -> None:
        if (not (0 < self.initial <= self.cap) or self.ratio < 0 or self.failure_every < 1
                or not (0 < self.lead <= 1 <= self.late) or self.near <= 0):
            raise ValueError(
                "Backoff needs 0 < initial <= cap, ratio >= 0, failure_every >= 1,"
                f" 0 < lead <= 1 <= late and near > 0, got {self}"
            )

    def delay(self, waited: float, expected: float | None = None) -> float:
        """Seconds to sleep before the next poll.

        Args:
            waited: Seconds waited so far.
            expected: Seconds after which the result is expected, if known.
        """
        if expected is not None and expected > 0:
            dense_from = self.lead * expected
            if waited < dense_from:
                sparse = max(self.sparse_min, self.sparse_ratio * waited)
                return max(self.initial, min(dense_from - waited, sparse, self.cap))
            if waited < self.late * expected:
                return min(self.cap, max(self.initial, self.near * expected))
        return min(self.cap, max(self.initial, self.ratio * waited))


class ServiceTimes:
    """How long recent requests took, by their size (rows): what :class:`Backoff` expects.

    Args:
        keep: Recent times kept per size.
    """

    def __init__(self, *, keep: int = 5) -> None:
        self._keep = keep
        self._seconds: dict[int, deque[float]] = {}

    def record(self, n_rows: int, seconds: float) -> None:
        """Remember that a request of ``n_rows`` rows took ``seconds`` (sent to result found)."""
        self._seconds.setdefault(n_rows, deque(maxlen=self._keep)).append(seconds)

    def expected(self, n_rows: int) -> float | None:
        """Seconds a request of ``n_rows`` rows should take, once two of that size were timed.

        The fastest recent one counts: a cold first request (fresh keys, the endpoint's first
        run) or a late pick-up cannot push the estimate up. A batch is not predicted from single
        rows: its rows share the per-request overhead, so scaling a single row's time
        overestimates it, and the result would be picked up late.
        """
        recent = self._seconds.get(n_rows, ())
        return min(recent) if len(recent) >= 2 else None


@dataclass(frozen=True)
class PolledObject:
    """An object found by :func:`wait_for_result`.

    Attributes:
        body: The object's bytes.
        download_seconds: Duration of the successful read alone.
        polls: How many times the output location was tried.
        found_at: ``clock()`` value when the successful read started.
    """

    body: bytes
    download_seconds: float
    polls: int
    found_at: float


def wait_for_result(
    storage: S3Storage,
    *,
    output: S3Uri,
    failure: S3Uri | None,
    deadline: float,
    backoff: Backoff,
    expected_at: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PolledObject:
    """Poll ``output`` and ``failure`` with get_object until one exists; return the output.

    Args:
        failure: The failure location (None when the endpoint reports none).
        deadline: ``clock()`` value after which to give up.
        expected_at: ``clock()`` value at which the result is expected, if known.

    Raises:
        InferenceFailedError: the failure object appeared (carries the server's message).
        InferenceTimeoutError: neither appeared before ``deadline``.
        StorageError: S3 itself failed.
    """
    started_waiting = clock()
    expected = None if expected_at is None else expected_at - started_waiting
    polls = 0
    while True:
        polls += 1
        started, found_at = time.perf_counter(), clock()
        data = storage.get_if_exists(output)
        if data is not None:
            return PolledObject(data, time.perf_counter() - started, polls, found_at)
        remaining = deadline - clock()
        if failure is not None and (polls % backoff.failure_every == 0 or remaining <= 0):
            _raise_if_failed(storage, failure)
        if remaining <= 0:
            raise InferenceTimeoutError(
                f"no result at {output} (nor failure at {failure}) before the timeout; the"
                " endpoint may be overloaded, scaled to zero or stopped: raise `timeout` or check"
                " the endpoint's logs"
            )
        sleep(min(backoff.delay(clock() - started_waiting, expected), remaining))


def _raise_if_failed(storage: S3Storage, failure: S3Uri) -> None:
    """Raise :class:`InferenceFailedError` if the failure object exists."""
    error = storage.get_if_exists(failure)
    if error is None:
        return
    status, code, message = parse_error_body(error)
    raise InferenceFailedError(
        message,
        status=status,
        code=code,
        location=str(failure),
        retryable=is_retryable(code, status),
    )
