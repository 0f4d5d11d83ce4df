"""Polling for the async result: bounded backoff, timeout, failure objects (real S3 over HTTP)."""

from __future__ import annotations

import threading
import time

import pytest

from client.errors import InferenceFailedError, InferenceTimeoutError
from client.storage import Backoff, S3Storage, ServiceTimes, wait_for_result
from common.contract import S3Uri, error_body
from tests.fixtures.clock import FakeClock


def test_backoff_starts_fast_is_proportional_and_capped() -> None:
    backoff = Backoff()
    assert [backoff.delay(w) for w in (0.0, 0.05, 2.0, 10.0, 3600.0)] == [
        0.005, 0.005, 0.1, 0.5, 1.0]


def test_with_an_estimate_polls_are_sparse_then_dense_around_it() -> None:
    backoff = Backoff()
    expected = 2.0
    assert backoff.delay(0.0, expected) == 0.05  # quick failures still surface within 50 ms
    assert backoff.delay(0.4, expected) == 0.4  # sparse: as long as the time waited (doubling)
    assert backoff.delay(1.6, expected) == pytest.approx(0.3)  # never past 95 % of expected
    assert backoff.delay(1.95, expected) == pytest.approx(0.04)  # dense: 2 % of expected
    assert backoff.delay(3.0, expected) == pytest.approx(0.15)  # overdue: proportional again


def test_service_times_predict_a_size_only_from_requests_of_that_size() -> None:
    times = ServiceTimes(keep=3)
    times.record(1, 0.05)
    assert times.expected(1) is None  # one sample may be a cold first request
    times.record(1, 0.04)
    assert times.expected(1) == 0.04  # the fastest recent one
    assert times.expected(32) is None  # 32 x a single row's time would overestimate a batch
    times.record(32, 0.4)
    times.record(32, 0.3)
    assert (times.expected(32), times.expected(1)) == (0.3, 0.04)
    for seconds in (0.09, 0.08, 0.07):
        times.record(1, seconds)
    assert times.expected(1) == 0.07  # only the last ``keep`` count


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 2, "cap": 1},
                                    {"ratio": -1}, {"failure_every": 0}, {"lead": 1.5},
                                    {"near": 0}])
def test_backoff_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Backoff needs"):
        Backoff(**kwargs)


@pytest.mark.parametrize("ready_at", [0.02, 1.3, 40.0])
def test_result_is_picked_up_at_most_five_percent_late(s3_client, bucket, ready_at) -> None:
    """The object appears at ``ready_at`` (simulated clock): found within max(5 ms, 5 %)."""
    clock = FakeClock()
    storage = S3Storage(s3_client)

    def sleep(seconds: float) -> None:
        before = clock.now
        clock.sleep(seconds)
        if before < ready_at <= clock.now:
            s3_client.put_object(Bucket=bucket, Key=f"out/{ready_at}.out", Body=b"result")

    found = wait_for_result(
        storage,
        output=S3Uri(bucket, f"out/{ready_at}.out"),
        failure=S3Uri(bucket, "fail/none-error.out"),
        deadline=1000.0,
        backoff=Backoff(),
        clock=clock,
        sleep=sleep,
    )
    assert found.body == b"result"
    assert clock.now - ready_at <= max(0.005, 0.05 * clock.now) + 1e-9


@pytest.mark.parametrize("ready_at", [0.02, 2.0, 40.0])
def test_an_expected_result_costs_few_polls_and_is_found_promptly(
    s3_client, bucket, ready_at
) -> None:
    """Estimate right: ~12 polls plus one per ``cap`` second, picked up within 2 % (or 5 ms).

    Proportional polling alone would take ~20 + ln(T / 0.1 s) / 0.05 polls (~140 for 40 s).
    """
    clock = FakeClock()
    storage = S3Storage(s3_client)
    key = f"out/expected-{ready_at}.out"

    def sleep(seconds: float) -> None:
        before = clock.now
        clock.sleep(seconds)
        if before < ready_at <= clock.now:
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"result")

    found = wait_for_result(
        storage,
        output=S3Uri(bucket, key),
        failure=S3Uri(bucket, "fail/none-error.out"),
        deadline=1000.0,
        backoff=Backoff(),
        expected_at=ready_at,
        clock=clock,
        sleep=sleep,
    )
    assert found.body == b"result" and found.polls <= 12 + ready_at / Backoff().cap
    assert clock.now - ready_at <= max(0.005, 0.02 * ready_at) + 1e-9


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
    assert clock.sleeps[0] == 0.005
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
