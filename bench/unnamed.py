"""P4 for clients that name their keys only by URI (the AWS sample's client, plain concrete-ml).

Such a client uploads its evaluation keys once, then sends requests holding nothing but
``evaluation_keys_uri`` and ``encrypted_query_uri``. The server cannot look its keys up by
sha256; the benchmark measures how many key bytes it still moves per request (the server's own
``download_bytes`` counter, read through ``GET /metrics`` around each request).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.storage import Backoff, S3Storage, wait_for_result
from common.contract import CONTENT_TYPE_JSON, S3Uri, build_request, parse_s3_uri

RESULT_TIMEOUT = 600.0


@dataclass
class UnnamedKeysClient:
    """Sends requests as the AWS sample's client does: two URIs, no hashes, no fingerprint.

    Args:
        fhe_client: A concrete-ml ``FHEModelClient`` holding its keys.
        evaluation_keys: Its serialized evaluation keys.
        storage: S3 access (uploads carry SSE-AES256, like the kit's client).
        runtime: A boto3 ``sagemaker-runtime`` client of the endpoint.
        endpoint_name: The endpoint to invoke.
        prefix: ``s3://bucket/prefix`` for the keys, queries and request documents.
    """

    fhe_client: Any
    evaluation_keys: bytes
    storage: S3Storage
    runtime: Any
    endpoint_name: str
    prefix: S3Uri

    @property
    def keys_uri(self) -> S3Uri:
        """Where the keys live: a fixed name, not a content address."""
        return self._at("evaluation_keys.ekl")

    def upload_keys(self) -> None:
        """Upload the evaluation keys (once per key set)."""
        self.storage.put(self.keys_uri, self.evaluation_keys)

    def predict_proba(self, scaled_row: np.ndarray) -> np.ndarray:
        """One row, one request: encrypt, upload, invoke, wait, decrypt.

        Raises:
            InferenceFailedError, InferenceTimeoutError, StorageError: as the kit's client.
        """
        name = uuid.uuid4().hex
        query, request = self._at(f"queries/{name}.bin"), self._at(f"requests/{name}.json")
        self.storage.put(query, self.fhe_client.quantize_encrypt_serialize(
            np.asarray(scaled_row, dtype=np.float64).reshape(1, -1)))
        self.storage.put(request, build_request(evaluation_keys_uri=str(self.keys_uri),
                                                encrypted_query_uri=str(query)),
                         content_type=CONTENT_TYPE_JSON)
        response = self.runtime.invoke_endpoint_async(
            EndpointName=self.endpoint_name, InputLocation=str(request),
            ContentType=CONTENT_TYPE_JSON, InferenceId=name)
        failure = response.get("FailureLocation")
        result = wait_for_result(
            self.storage, output=parse_s3_uri(response["OutputLocation"], field="OutputLocation"),
            failure=parse_s3_uri(failure, field="FailureLocation") if failure else None,
            deadline=time.monotonic() + RESULT_TIMEOUT, backoff=Backoff())
        return np.asarray(self.fhe_client.deserialize_decrypt_dequantize(result.body))

    def _at(self, name: str) -> S3Uri:
        return S3Uri(self.prefix.bucket, f"{self.prefix.key}/{name}")
