"""Errors the server turns into HTTP responses.

Tree (all carry ``status`` and ``code``; the Flask handler in :mod:`inference.predictor`
turns them into :func:`common.contract.error_body`)::

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

from common.contract import ERROR_EVALUATION_KEYS_NOT_FOUND


class ServingError(Exception):
    """Base of errors with an HTTP status; unknown exceptions become 500 InternalError."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    """The request does not follow the wire contract."""

    status, code = 400, "BadRequest"


class AccessDenied(ServingError):
    """The server may not read that S3 location."""

    status, code = 403, "AccessDenied"


class ObjectNotFound(ServingError):
    """The S3 object (or its bucket) does not exist."""

    status, code = 404, "NotFound"


class EvaluationKeysNotFound(ObjectNotFound):
    """The evaluation keys object is missing: the client should upload its keys again."""

    status, code = 404, ERROR_EVALUATION_KEYS_NOT_FOUND


class PayloadTooLarge(ServingError):
    """The body, an object or the batch is over its configured limit."""

    status, code = 413, "PayloadTooLarge"


class IntegrityError(ServingError):
    """Downloaded bytes do not hash to the sha256 the request named."""

    status, code = 422, "ChecksumMismatch"


class ModelMismatch(ServingError):
    """Fingerprint, keys or ciphertext were made for another model, or are not concrete data."""

    status, code = 422, "ModelMismatch"


class NotReady(ServingError):
    """The model is not loaded."""

    status, code = 503, "NotReady"


class StorageUnavailable(ServingError):
    """S3 cannot be reached right now; retry later."""

    status, code = 503, "StorageUnavailable"
