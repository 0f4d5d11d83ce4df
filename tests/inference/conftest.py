"""Fixtures for the serving tests: keyed FHE clients, an uploader, a real `serve` process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from common.contract import build_request, sha256_hex
from inference.settings import Settings, parse_allowed_prefix
from local_mode.processes import free_port
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import RunningServe, serve_process

ALLOWED_PREFIX = "fhe/"


@dataclass
class KeyedClient:
    """A concrete-ml client with generated keys for one fixture model."""

    model: FixtureModel
    client: Any
    keys: bytes

    @property
    def keys_sha(self) -> str:
        return sha256_hex(self.keys)

    def encrypt(self, row: np.ndarray) -> bytes:
        return self.client.quantize_encrypt_serialize(np.asarray(row, dtype=np.float64)[None, :])

    def decrypt(self, result: bytes) -> np.ndarray:
        return self.client.deserialize_decrypt_dequantize(result)

    def expected(self, row: np.ndarray) -> np.ndarray:
        return self.model.clear_model.predict_proba(np.asarray(row)[None, :], fhe="disable")


def make_keyed_client(model: FixtureModel, key_dir: Path) -> KeyedClient:
    """Generate fresh keys for ``model`` in ``key_dir``."""
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(model.model_dir), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys(force=True)
    return KeyedClient(model, client, client.get_serialized_evaluation_keys())


@pytest.fixture(scope="session")
def keyed(fixture_models: dict[str, FixtureModel],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyedClient]:
    """{"linear", "tree"} -> a keyed client (keys generated once per session)."""
    return {kind: make_keyed_client(model, tmp_path_factory.mktemp(f"keys-{kind}"))
            for kind, model in fixture_models.items()}


@pytest.fixture(scope="session")
def serving_bucket(s3_server: LocalS3Server) -> str:
    """One bucket for the serving tests (the server's allow-list names its fhe/ prefix)."""
    name = f"serving-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url,
                 region_name=LOCAL_REGION).create_bucket(Bucket=name)
    return name


class Uploader:
    """Puts keys, ciphertexts and requests in S3 under a per-test prefix, returns URIs."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix

    def put(self, name: str, data: bytes) -> str:
        key = f"{self.prefix}{name}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ServerSideEncryption="AES256")
        return f"s3://{self.bucket}/{key}"

    def keys(self, client: KeyedClient) -> str:
        return self.put(f"keys/{client.keys_sha}.ekl", client.keys)

    def request(self, client: KeyedClient, rows: np.ndarray, *, batch: bool = False,
                **options: Any) -> bytes:
        """Upload keys and one ciphertext per row; return the request body."""
        uris = [self.put(f"queries/{uuid.uuid4().hex}.bin", client.encrypt(row)) for row in rows]
        if batch:
            return build_request(evaluation_keys_uri=self.keys(client), encrypted_query_uris=uris,
                                 **options)
        return build_request(evaluation_keys_uri=self.keys(client),
                             encrypted_query_uri=uris[0], **options)


@pytest.fixture
def uploader(s3_server: LocalS3Server, serving_bucket: str) -> Uploader:
    """An uploader under a fresh allowed prefix."""
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    return Uploader(s3, serving_bucket, f"{ALLOWED_PREFIX}{uuid.uuid4().hex[:8]}/")


def server_settings(model: FixtureModel, s3_server: LocalS3Server, bucket: str,
                    cache_dir: Path, **overrides: Any) -> Settings:
    """Settings for a server of ``model`` reading from ``bucket``/fhe/."""
    values: dict[str, Any] = {
        "model_dir": model.model_dir,
        "allowed_prefixes": (parse_allowed_prefix(f"s3://{bucket}/{ALLOWED_PREFIX}"),),
        "key_cache_dir": cache_dir,
        "s3_endpoint_url": s3_server.endpoint_url,
        "s3_connect_timeout": 2.0,
        "s3_read_timeout": 10.0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="session")
def running_serve(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
                  serving_bucket: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[RunningServe]:
    """The real `serve` (nginx + gunicorn, one worker) for the tree model, once per session."""
    work = tmp_path_factory.mktemp("serve")
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, work / "cache",
                               port=free_port(), host="127.0.0.1", timeout=120)
    with serve_process(settings, work / "serve.log", extra_env=s3_server.env()) as serve:
        yield serve
    assert serve.process.returncode == 0, serve.log.read_text()[-3000:]
