"""Retrying what the wire contract calls retryable: bounded exponential backoff, full jitter.

What is retried: an error whose ``retryable`` is True (:mod:`client.errors`), and nothing else.
For the endpoint's answers that is the contract's error table
(:data:`common.contract.ERROR_CODES`: ``503 NotReady`` while a worker loads its model,
``503 StorageUnavailable``, ``502 ContainerUnreachable``, ``500 InternalError``, ...); for the
``InvokeEndpointAsync`` call itself, a 5xx, throttling or an unreachable service. A 4xx (a bad
request, a model mismatch, access denied, an expired request) is raised at once.

Which step is retried:

* the invocation, when ``InvokeEndpointAsync`` itself fails retryably (the runtime never
  accepted it): invoked again, same InferenceId;
* the request, when its failure object carries a retryable code: invoked again under a fresh
  InferenceId, from the *same* uploaded request and ciphertext objects (nothing is encrypted or
  uploaded twice), and the spent failure object is deleted.

Delays: before retry *n* the client sleeps a uniformly random time in
``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full jitter": retries of many clients after one
restart spread out instead of arriving together). A retry happens only if its delay ends before
the request's deadline (``timeout``); otherwise the last error is raised, with a note saying
why. Each retry is logged (``logger.warning``: the step, the code, the attempt, the delay).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from client.errors import EncryptedInferenceError, InferenceFailedError, InvalidInputError

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    The defaults ride out a worker restart (a model load: 8 s for a small tree here, tens of
    seconds for a large circuit): at most 8 invocations, waits capped at 1, 2, 4, 8, 16, 30 and
    30 s (about 45 s in total on average, 91 s at most), never past the request's timeout.
    Each attempt costs one ``InvokeEndpointAsync`` call and a few S3 reads, no upload.

    Attributes:
        max_attempts: Invocations of one request at most, the first included (1: never retry).
        base_delay: Cap of the wait before the first retry, seconds; it doubles per retry.
        max_delay: Cap of any one wait, seconds.
    """

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            problems.append(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not self.base_delay > 0:
            problems.append(f"base_delay must be > 0 seconds, got {self.base_delay!r}")
        if not self.max_delay >= self.base_delay:
            problems.append(f"max_delay must be >= base_delay ({self.base_delay!r}),"
                            f" got {self.max_delay!r}")
        if problems:
            raise InvalidInputError("bad retry policy: " + "; ".join(problems))

    def cap(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first retry)."""
        return min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))


def describe(exc: EncryptedInferenceError) -> str:
    """``503 NotReady`` for an endpoint error, else the exception's class name."""
    if isinstance(exc, InferenceFailedError):
        return f"{exc.status or '?'} {exc.code}"
    return type(exc).__name__


@dataclass
class Retrier:
    """Applies a :class:`RetryPolicy`; the clock, sleep and randomness are replaceable (tests).

    Attributes:
        policy: The policy.
        clock: Monotonic seconds (deadlines are values of this clock).
        sleep: Waits that many seconds.
        random: Uniform in [0, 1).
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random

    def pause(self, exc: EncryptedInferenceError, *, attempt: int, deadline: float,
              what: str) -> bool:
        """Wait before the next attempt after ``exc`` ended attempt ``attempt``.

        Returns:
            True after waiting (retry now); False when the error must be raised: it is not
            retryable, the attempts are used up, or the wait would end past ``deadline`` (a
            note on ``exc`` then says which).
        """
        if not exc.retryable:
            return False
        if attempt >= self.policy.max_attempts:
            exc.add_note(f"gave up after {attempt} attempt(s) (max_attempts)")
            return False
        delay = self.policy.cap(attempt) * self.random()
        if self.clock() + delay >= deadline:
            exc.add_note(f"not retried: attempt {attempt + 1} would start after the timeout")
            return False
        logger.warning("%s failed with %s on attempt %d of %d; retrying in %.2f s", what,
                       describe(exc), attempt, self.policy.max_attempts, delay)
        self.sleep(delay)
        return True

    def call(self, fn: Callable[[], T], *, deadline: float, what: str, attempt: int = 1,
             on_retry: Callable[[int], None] | None = None) -> T:
        """Run ``fn`` until it succeeds or raises an error :meth:`pause` will not retry.

        Args:
            attempt: The number of ``fn``'s first call here (earlier attempts count).
            on_retry: Called with each new attempt's number before that attempt.
        """
        while True:
            try:
                return fn()
            except EncryptedInferenceError as exc:
                if not self.pause(exc, attempt=attempt, deadline=deadline, what=what):
                    raise
                attempt += 1
                if on_retry is not None:
                    on_retry(attempt)
