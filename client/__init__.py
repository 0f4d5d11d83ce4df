"""Client side of the kit: keys, encryption and decryption stay on this machine.

>>> from client import EncryptedPredictor  # doctest: +SKIP
>>> with EncryptedPredictor("my-endpoint", "s3://bucket/job/output/model.tar.gz",
...                         "s3://bucket/fhe") as model:          # doctest: +SKIP
...     labels = model.predict(x)
"""

from client.errors import (
    EncryptedInferenceError,
    FingerprintMismatchError,
    InferenceFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    KeyStoreError,
    ModelArtifactError,
    ServiceUnavailableError,
    StorageError,
    UnsupportedOperationError,
    VersionMismatchError,
)
from client.keys import KeySet, KeyStore, default_cache_dir, default_key_dir
from client.model import ClientModel, check_versions, load_client_model
from client.predictor import EncryptedPredictor, Timings, validate_features
from client.retry import RetryPolicy
from client.settings import ClientSettings
from client.storage import Backoff

__all__ = [
    "Backoff",
    "ClientModel",
    "ClientSettings",
    "EncryptedInferenceError",
    "EncryptedPredictor",
    "FingerprintMismatchError",
    "InferenceFailedError",
    "InferenceTimeoutError",
    "InvalidInputError",
    "KeySet",
    "KeyStore",
    "KeyStoreError",
    "ModelArtifactError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "StorageError",
    "Timings",
    "UnsupportedOperationError",
    "VersionMismatchError",
    "check_versions",
    "default_cache_dir",
    "default_key_dir",
    "load_client_model",
    "validate_features",
]
