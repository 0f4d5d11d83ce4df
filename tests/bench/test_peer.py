"""The peers' serving approach (P7 baseline): keys deserialised per request, from disk or RAM."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from bench.peer import KEY_SOURCE_DISK, KEY_SOURCES, create_peer_app
from common.contract import CONTENT_TYPE_JSON, parse_s3_uri, sha256_hex
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import ALLOWED_PREFIX, Uploader, make_keyed_client, server_settings


@pytest.fixture
def uploader(s3_server: LocalS3Server, bucket: str) -> Uploader:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    return Uploader(s3, bucket, f"{ALLOWED_PREFIX}{uuid.uuid4().hex[:8]}/")


def _deserialisations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the sha256 of every key set ``fhe.EvaluationKeys.deserialize`` is handed."""
    from concrete import fhe

    seen: list[str] = []
    real = fhe.EvaluationKeys.deserialize

    def deserialize(data: bytes) -> Any:
        seen.append(sha256_hex(data))
        return real(data)

    monkeypatch.setattr(fhe.EvaluationKeys, "deserialize", staticmethod(deserialize))
    return seen


@pytest.mark.parametrize("source", KEY_SOURCES)
def test_peer_deserialises_the_keys_on_every_request_from_its_own_copy(
        source: str, fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
        bucket: str, uploader: Uploader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fixture_models["tree"]
    cache = tmp_path / "cache"
    app = create_peer_app(server_settings(model, s3_server, bucket, cache), key_source=source)
    http = app.test_client()
    keyed = make_keyed_client(model, tmp_path / "keys")
    seen = _deserialisations(monkeypatch)
    rows = model.scaled_test[:3]

    def query(row: np.ndarray) -> Any:
        return http.post("/invocations", data=uploader.request(keyed, row[None, :]),
                         content_type=CONTENT_TYPE_JSON)

    first = query(rows[0])
    assert first.status_code == 200, first.data
    np.testing.assert_allclose(keyed.decrypt(first.data), keyed.expected(rows[0]), atol=1e-6)
    keys_uri = parse_s3_uri(uploader.keys(keyed))
    # From now on S3 holds other bytes under the keys' URI: the peer must not read it again.
    uploader.s3.put_object(Bucket=keys_uri.bucket, Key=keys_uri.key, Body=b"not the keys")
    uploader.keys = lambda _client: str(keys_uri)  # type: ignore[method-assign]
    second = query(rows[1])
    assert second.status_code == 200, second.data
    np.testing.assert_allclose(keyed.decrypt(second.data), keyed.expected(rows[1]), atol=1e-6)
    assert seen == [keyed.keys_sha] * 2  # once per request, never cached as an object
    copies = sorted((cache / "peer-evaluation-keys").glob("*")) if cache.exists() else []
    if source == KEY_SOURCE_DISK:
        # the AWS sample's layout: one file named by the sha256 of the URI, read every time
        assert [p.name for p in copies] == [sha256_hex(str(keys_uri).encode())]
        other = make_keyed_client(model, tmp_path / "other-keys")
        copies[0].write_bytes(other.keys)
        third = query(rows[2])
        assert third.status_code == 200
        assert seen[-1] == other.keys_sha
    else:
        assert copies == []
