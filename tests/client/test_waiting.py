"""Polling for the async result: bounded backoff, timeout, failure objects (real S3 over HTTP)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from client.errors import InferenceFailedError, InferenceTimeoutError
from client.storage import Backoff, S3Storage, wait_for_result
from inference.contract import S3Uri, error_body


class FakeClock:
    """Deterministic time: ``sleep`` advances ``now``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_starts_fast_and_is_capped() -> None:
    delays = list(itertools.islice(Backoff().delays(), 9))
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]


def test_missing_output_times_out_within_the_bound(s3_client, bucket) -> None:
    clock = FakeClock()
    storage = S3Storage(s3_client)
    with pytest.raises(InferenceTimeoutError, match=r"no result at s3://.*/out/x\.out") as info:
        wait_for_result(
            storage,
            output=S3Uri(bucket, "out/x.out"),
            failure=S3Uri(bucket, "fail/x-error.out"),
            deadline=3.0,
            backoff=Backoff(),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == pytest.approx(3.0)
    assert max(clock.sleeps) <= 1.0
    assert clock.sleeps[0] == 0.01
    assert isinstance(info.value, TimeoutError)
    assert info.value.retryable


def test_failure_object_becomes_the_documented_error(s3_client, bucket) -> None:
    s3_client.put_object(
        Bucket=bucket,
        Key="fail/x-error.out",
        Body=error_body(400, "FingerprintMismatch", "model fingerprint differs"),
    )
    with pytest.raises(
        InferenceFailedError,
        match=r"\[400 FingerprintMismatch\].*model fingerprint"
        r" differs",
    ) as info:
        wait_for_result(
            S3Storage(s3_client),
            output=S3Uri(bucket, "out/x.out"),
            failure=S3Uri(bucket, "fail/x-error.out"),
            deadline=time.monotonic() + 60,
            backoff=Backoff(),
        )
    assert (info.value.status, info.value.code) == (400, "FingerprintMismatch")
    assert info.value.message == "model fingerprint differs"
    assert not info.value.retryable


def test_foreign_failure_body_keeps_the_server_text(s3_client, bucket) -> None:
    s3_client.put_object(Bucket=bucket, Key="fail/y", Body=b"Received server error (500)")
    with pytest.raises(InferenceFailedError, match=r"Received server error \(500\)") as info:
        wait_for_result(
            S3Storage(s3_client),
            output=S3Uri(bucket, "out/y"),
            failure=S3Uri(bucket, "fail/y"),
            deadline=time.monotonic() + 60,
            backoff=Backoff(),
        )
    assert info.value.status is None


def test_output_that_appears_later_is_returned(s3_client, bucket) -> None:
    storage = S3Storage(s3_client)
    timer = threading.Timer(
        0.3, lambda: s3_client.put_object(Bucket=bucket, Key="out/z", Body=b"result")
    )
    timer.start()
    try:
        found = wait_for_result(
            storage,
            output=S3Uri(bucket, "out/z"),
            failure=S3Uri(bucket, "fail/z"),
            deadline=time.monotonic() + 60,
            backoff=Backoff(),
        )
    finally:
        timer.cancel()
    assert found.body == b"result"
    assert found.polls > 1
    assert storage.bytes_downloaded == len(b"result")
