"""One reading of S3 errors for the server, the client and the local runtime."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from common.s3_access import S3Failure, classify, error_code


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("NoSuchKey", 404, S3Failure.NOT_FOUND),
    ("404", 404, S3Failure.NOT_FOUND),            # a HEAD has no body: the status is the code
    ("NoSuchBucket", 404, S3Failure.NO_BUCKET),   # the code wins over the status
    ("AccessDenied", 403, S3Failure.DENIED),
    ("ExpiredToken", 400, S3Failure.DENIED),
    ("SomethingNew", 403, S3Failure.DENIED),      # an unknown code: the status decides
    ("SlowDown", 503, S3Failure.RETRY_LATER),
    ("RequestTimeout", 400, S3Failure.RETRY_LATER),
    ("SomethingNew", 500, S3Failure.RETRY_LATER),
    ("InvalidRequest", 400, S3Failure.REFUSED),
])
def test_client_errors_by_code_then_status(code: str, status: int, kind: S3Failure) -> None:
    error = _client_error(code, status)
    assert classify(error) is kind
    assert error_code(error) == code


def test_unreachable_is_retry_later_and_local_failures_are_failed() -> None:
    assert classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) \
        is S3Failure.RETRY_LATER
    assert classify(ReadTimeoutError(endpoint_url="http://127.0.0.1:1")) is S3Failure.RETRY_LATER
    assert classify(NoCredentialsError()) is S3Failure.FAILED

