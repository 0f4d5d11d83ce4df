"""Errors the server turns into HTTP responses.

Each carries one row of the contract's error table (:data:`common.contract.ERROR_CODES`), whose
``status`` and ``code`` the Flask handler in :mod:`inference.predictor` answers with::

    ServingError(Exception)   500 InternalError (base)
    ├── BadRequest            400 BadRequest: malformed JSON, wrong types, missing fields
    ├── AccessDenied          403 AccessDenied: URI outside the allow-list, S3 AccessDenied
    ├── ObjectNotFound        404 NotFound: S3 object or bucket missing
    │   └── EvaluationKeysNotFound  404 EvaluationKeysNotFound: the keys object is missing
    ├── PayloadTooLarge       413 PayloadTooLarge: body, object or batch over the limit
    ├── IntegrityError        422 ChecksumMismatch: bytes do not match the sha256 given
    ├── ModelMismatch         422 ModelMismatch: keys/ciphertext/fingerprint of another model
    ├── NotReady              503 NotReady: the model is not loaded (yet)
    └── StorageUnavailable    503 StorageUnavailable: S3 unreachable or timed out
"""

from __future__ import annotations

from typing import ClassVar

from common import contract
from common.contract import ErrorCode


class ServingError(Exception):
    """Base of errors with an HTTP status; unknown exceptions become 500 InternalError.

    Args:
        message: What went wrong and how to fix it (sent to the caller).
        error: The table row to answer with, instead of the class's own.
    """

    error: ClassVar[ErrorCode] = contract.INTERNAL_ERROR

    def __init__(self, message: str, *, error: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = error or type(self).error

    @property
    def status(self) -> int:
        """The HTTP status of the response."""
        return self.row.status

    @property
    def code(self) -> str:
        """The ``code`` of the error body."""
        return self.row.code


class BadRequest(ServingError):
    """The request does not follow the wire contract."""

    error = contract.BAD_REQUEST


class AccessDenied(ServingError):
    """The server may not read that S3 location."""

    error = contract.ACCESS_DENIED


class ObjectNotFound(ServingError):
    """The S3 object (or its bucket) does not exist."""

    error = contract.NOT_FOUND


class EvaluationKeysNotFound(ObjectNotFound):
    """The evaluation keys object is missing: the client should upload its keys again."""

    error = contract.EVALUATION_KEYS_NOT_FOUND


class PayloadTooLarge(ServingError):
    """The body, an object or the batch is over its configured limit."""

    error = contract.PAYLOAD_TOO_LARGE


class IntegrityError(ServingError):
    """Downloaded bytes do not hash to the sha256 the request named."""

    error = contract.CHECKSUM_MISMATCH


class ModelMismatch(ServingError):
    """Fingerprint, keys or ciphertext were made for another model, or are not concrete data."""

    error = contract.MODEL_MISMATCH


class NotReady(ServingError):
    """The model is not loaded."""

    error = contract.NOT_READY


class StorageUnavailable(ServingError):
    """S3 cannot be reached right now; retry later."""

    error = contract.STORAGE_UNAVAILABLE
