"""What every S3 call of the kit shares: the encryption of uploads and one reading of S3 errors.

Every object the kit writes (training data, model tarballs, keys, ciphertexts, requests, async
results) is stored with SSE-S3 (:data:`SSE`); the bucket policy in ``iam/`` refuses any other
upload. Every S3 error is read through :func:`classify`, one table for the server's reads, the
client's calls and the local runtime's: each role then says it in its own words (an HTTP status
for the server, an exception for the client, a failure object for the runtime).
"""

from __future__ import annotations

from enum import Enum

from botocore.exceptions import (
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    HTTPClientError,
    ReadTimeoutError,
)

SSE_ALGORITHM = "AES256"
SSE = {"ServerSideEncryption": SSE_ALGORITHM}
"""Keyword arguments of ``put_object`` (``ExtraArgs`` of ``upload_file``): SSE-S3."""


class S3Failure(Enum):
    """What an S3 error means for the caller."""

    NOT_FOUND = "the object does not exist"
    NO_BUCKET = "the bucket does not exist"
    DENIED = "the credentials may not do this"
    RETRY_LATER = "S3 could not answer now (unreachable, throttling, a server error)"
    REFUSED = "S3 refused the request as made"
    FAILED = "the call failed before S3 answered (credentials missing, bad parameters)"


_BY_CODE = {
    **dict.fromkeys(("NoSuchKey", "404", "NotFound"), S3Failure.NOT_FOUND),
    "NoSuchBucket": S3Failure.NO_BUCKET,
    **dict.fromkeys(("AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "ExpiredToken"), S3Failure.DENIED),
    **dict.fromkeys(("SlowDown", "ServiceUnavailable", "Throttling", "ThrottlingException",
                     "RequestTimeout", "InternalError", "503", "500"), S3Failure.RETRY_LATER),
}
_BY_STATUS = {404: S3Failure.NOT_FOUND, 403: S3Failure.DENIED}
_UNREACHABLE = (ConnectionError, HTTPClientError, ConnectTimeoutError, ReadTimeoutError)


def error_code(exc: ClientError) -> str:
    """The error code S3 answered (``NoSuchKey``, ``403``, ...), ``Unknown`` when it gave none."""
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def classify(exc: BaseException) -> S3Failure:
    """What an exception raised by a boto3 S3 call means (the code first, then the status)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        found = _BY_CODE.get(error_code(exc)) or _BY_STATUS.get(status)
        if found is not None:
            return found
        if isinstance(status, int) and status >= 500:
            return S3Failure.RETRY_LATER
        return S3Failure.REFUSED
    return S3Failure.RETRY_LATER if isinstance(exc, _UNREACHABLE) else S3Failure.FAILED
