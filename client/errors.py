"""Every exception the client raises, in one tree.

All of them derive from :class:`EncryptedInferenceError`, and each also derives from the
built-in exception a caller would naturally catch (``ValueError`` for bad input,
``TimeoutError`` for waiting too long, ``ConnectionError`` for an unreachable service)::

    EncryptedInferenceError(Exception)
    ├── VersionMismatchError(RuntimeError)     built with another Python/concrete version
    ├── FingerprintMismatchError(ValueError)   client.zip is not the file the manifest describes
    ├── ModelArtifactError(ValueError)         model.tar.gz / model dir unreadable or incomplete
    ├── InvalidInputError(ValueError)          X has the wrong shape, type or non-finite values
    ├── UnsupportedOperationError(TypeError)   e.g. predict_proba on a regressor
    ├── KeyStoreError(OSError)                 the key directory cannot be read or written
    ├── InferenceFailedError(RuntimeError)     the endpoint reported an error (status/code/message)
    ├── InferenceTimeoutError(TimeoutError)    no result within the configured bound
    └── StorageError(OSError)                  an S3 call failed
        └── ServiceUnavailableError(ConnectionError)   unreachable or throttled: retry later

Every error has a ``retryable`` attribute: True when the same call may succeed later unchanged.
"""

from __future__ import annotations

# Codes of the InferenceFailedError the client raises itself, after the endpoint answered: the
# endpoint's own codes are the contract's error table (common.contract.ERROR_CODES).
CODE_BAD_RESPONSE = "BadResponse"
CODE_DECRYPTION_FAILED = "DecryptionFailed"


class EncryptedInferenceError(Exception):
    """Base class of every error raised by the client."""

    retryable: bool = False


class VersionMismatchError(EncryptedInferenceError, RuntimeError):
    """The model was compiled with a Python / concrete-python / concrete-ml this client lacks."""


class FingerprintMismatchError(EncryptedInferenceError, ValueError):
    """client.zip's sha256 differs from the manifest's (or the expected) model fingerprint."""


class ModelArtifactError(EncryptedInferenceError, ValueError):
    """The model archive or directory is missing files, unsafe, or carries an invalid manifest."""


class InvalidInputError(EncryptedInferenceError, ValueError):
    """The features passed to ``predict`` cannot be encrypted for this model."""


class UnsupportedOperationError(EncryptedInferenceError, TypeError):
    """The operation does not apply to this model (for example ``predict_proba`` on a regressor)."""


class KeyStoreError(EncryptedInferenceError, OSError):
    """The key directory cannot be created, read or written."""


class InferenceFailedError(EncryptedInferenceError, RuntimeError):
    """The endpoint reported an error for a request.

    Attributes:
        status: HTTP status the server chose (None when unknown).
        code: Machine-readable error code from the server's error body.
        message: The server's message.
        location: Where the failure was reported (an S3 URI or the endpoint name).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "Unknown",
        location: str | None = None,
        retryable: bool = False,
    ) -> None:
        where = f" ({location})" if location else ""
        super().__init__(f"inference failed [{status or '?'} {code}]{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.location = location
        self.retryable = retryable


class InferenceTimeoutError(EncryptedInferenceError, TimeoutError):
    """No output or failure object appeared within the configured timeout."""

    retryable = True


class StorageError(EncryptedInferenceError, OSError):
    """An S3 call failed (access denied, missing bucket, ...)."""


class ServiceUnavailableError(StorageError, ConnectionError):
    """S3 or SageMaker could not be reached or throttled the call; retrying later may work."""

    retryable = True
