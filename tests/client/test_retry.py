"""The retry policy on a fake clock: bounded, exponential, fully jittered, inside the timeout;
only what the contract's error table (and the client's error tree) calls retryable."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from client.errors import (
    InferenceFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    ServiceUnavailableError,
    StorageError,
)
from client.retry import Retrier, RetryPolicy
from common.contract import ERROR_CODES, NOT_READY, is_retryable
from tests.fixtures.clock import FakeClock


def _retrier(policy: RetryPolicy, time: FakeClock, randoms: Iterator[float] | None = None
             ) -> Retrier:
    draws = randoms if randoms is not None else iter(lambda: 1.0, None)
    return Retrier(policy, clock=time, sleep=time.sleep, random=lambda: next(draws))


def _endpoint_error(code: str = NOT_READY.code, status: int = NOT_READY.status
                    ) -> InferenceFailedError:
    return InferenceFailedError("model loading", status=status, code=code,
                                retryable=is_retryable(code, status))


class Failing:
    """Raises the given errors in turn, then returns "ok"; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_delays_double_up_to_the_cap_and_attempts_are_bounded(caplog) -> None:
    time = FakeClock(100.0)
    policy = RetryPolicy(max_attempts=7, base_delay=0.5, max_delay=4.0)
    fn = Failing(*[_endpoint_error() for _ in range(10)])
    with caplog.at_level(logging.WARNING, "client.retry"), \
            pytest.raises(InferenceFailedError, match="NotReady") as info:
        _retrier(policy, time).call(fn, deadline=time.now + 1000, what="request r1")
    assert fn.calls == 7
    assert time.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # random() = 1: each cap
    assert "gave up after 7 attempt(s)" in "".join(info.value.__notes__)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == ("request r1 failed with 503 NotReady on attempt 1 of 7;"
                           " retrying in 0.50 s")
    assert len(messages) == 6 and all(r.levelno == logging.WARNING for r in caplog.records)


def test_delays_are_fully_jittered_between_zero_and_the_cap() -> None:
    time = FakeClock(100.0)
    randoms = iter([0.0, 0.25, 0.999, 0.5])
    fn = Failing(*[_endpoint_error() for _ in range(4)])
    result = _retrier(RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=30.0), time,
                      randoms).call(fn, deadline=time.now + 1000, what="r")
    assert result == "ok" and fn.calls == 5
    assert time.sleeps == pytest.approx([0.0, 0.5, 0.999 * 4, 0.5 * 8])


def test_no_retry_starts_after_the_deadline() -> None:
    time = FakeClock(100.0)
    deadline = time.now + 5.0
    fn = Failing(*[_endpoint_error() for _ in range(10)])
    with pytest.raises(InferenceFailedError) as info:
        _retrier(RetryPolicy(max_attempts=10, base_delay=1.0), time).call(
            fn, deadline=deadline, what="r")
    assert time.sleeps == [1.0, 2.0]  # the next wait (4 s) would end past the deadline
    assert time.now < deadline
    assert fn.calls == 3
    assert "would start after the timeout" in "".join(info.value.__notes__)


@pytest.mark.parametrize("row", ERROR_CODES, ids=lambda row: f"{row.status}-{row.code}")
def test_exactly_the_rows_the_contract_marks_retryable_are_retried(row, caplog) -> None:
    time = FakeClock(100.0)
    fn = Failing(_endpoint_error(row.code, row.status))
    retrier = _retrier(RetryPolicy(max_attempts=3), time)
    if row.retryable:
        assert retrier.call(fn, deadline=time.now + 100, what="r") == "ok"
        assert fn.calls == 2 and len(caplog.records) == 1
    else:
        with pytest.raises(InferenceFailedError):
            retrier.call(fn, deadline=time.now + 100, what="r")
        assert fn.calls == 1 and time.sleeps == [] and caplog.records == []


@pytest.mark.parametrize(("error", "retried"), [
    (ServiceUnavailableError("throttled"), True),
    (StorageError("access denied"), False),
    (InvalidInputError("bad"), False),
    (_endpoint_error("Whatever", 502), True),   # not in the table: a 5xx may pass
    (_endpoint_error("Whatever", 429), False),  # not in the table, not a 5xx
])
def test_errors_outside_the_table_follow_their_retryable_flag(error, retried) -> None:
    time = FakeClock(100.0)
    fn = Failing(error)
    retrier = _retrier(RetryPolicy(), time)
    if retried:
        assert retrier.call(fn, deadline=time.now + 100, what="r") == "ok"
    else:
        with pytest.raises(type(error)):
            retrier.call(fn, deadline=time.now + 100, what="r")
    assert fn.calls == (2 if retried else 1)


def test_a_timeout_is_never_retried_by_pause() -> None:
    """InferenceTimeoutError is retryable in the tree, but only raised once the deadline passed."""
    time = FakeClock(100.0)
    error = InferenceTimeoutError("late")
    assert not _retrier(RetryPolicy(), time).pause(error, attempt=1, deadline=time.now,
                                                   what="r")
    assert time.sleeps == []


def test_max_attempts_one_never_retries() -> None:
    time = FakeClock(100.0)
    fn = Failing(_endpoint_error())
    with pytest.raises(InferenceFailedError):
        _retrier(RetryPolicy(max_attempts=1), time).call(fn, deadline=time.now + 100, what="r")
    assert fn.calls == 1 and time.sleeps == []


def test_the_defaults_are_documented_values() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (8, 1.0, 30.0)
    assert [policy.cap(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_attempts": 0}, "max_attempts must be an integer >= 1, got 0"),
    ({"base_delay": 0}, "base_delay must be > 0 seconds"),
    ({"base_delay": 2, "max_delay": 1}, r"max_delay must be >= base_delay \(2\)"),
    ({"max_attempts": 0, "base_delay": -1},
     "max_attempts must be an integer >= 1, got 0; base_delay must be > 0"),
])
def test_bad_policies_are_refused_with_every_problem(kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        RetryPolicy(**kwargs)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]
