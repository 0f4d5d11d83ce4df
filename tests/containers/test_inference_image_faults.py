"""The inference image on a bad day: an abandoned request, a 600 MB evaluation-keys object.

``docker run IMAGE serve`` (nginx + gunicorn as the image's non-root user) serves a fixture
tree model mounted at /opt/ml/model, reading from an S3 server on loopback whose request log
is the oracle of what the container read.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests

from bench.images import ImageBuild, ServingContainer, docker, serving_container
from common.contract import build_request, parse_error_body
from local_mode.processes import free_port
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.containers.conftest import IMAGE_TEST_TIMEOUT
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import KeyedClient, Uploader, s3_requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]
BUCKET = "fhe-faults"
BATCH_ROWS = 40
HUGE_KEYS_BYTES = 600 << 20


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    with LocalS3Server(log_path=tmp_path_factory.mktemp("s3") / "moto.log") as server:
        boto3.client("s3", endpoint_url=server.endpoint_url,
                     region_name=LOCAL_REGION).create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def served(inference_image: ImageBuild, fixture_models: dict[str, FixtureModel],
           own_s3: LocalS3Server, container_logs: Path) -> Iterator[ServingContainer]:
    """The image serving the tree fixture model, healthy."""
    model_dir = fixture_models["tree"].model_dir
    model_dir.chmod(0o755)
    env = {**own_s3.env(), "FHE_ALLOWED_S3_PREFIXES": f"s3://{BUCKET}/fhe"}
    with serving_container(inference_image.tag, model_dir=model_dir, port=free_port(), env=env,
                           log=container_logs / "serve-faults.log") as container:
        yield container


@pytest.fixture
def up(own_s3: LocalS3Server) -> Uploader:
    s3 = boto3.client("s3", endpoint_url=own_s3.endpoint_url, region_name=LOCAL_REGION)
    return Uploader(s3, BUCKET, f"fhe/{uuid.uuid4().hex[:8]}/")


def _logs(container: ServingContainer) -> str:
    result = docker("logs", container.name, check=False, timeout=60)
    return result.stdout + result.stderr


def _metrics(container: ServingContainer) -> dict[str, Any]:
    return json.loads(requests.get(f"{container.url}/metrics", timeout=30).content)


def _post(container: ServingContainer, body: bytes) -> requests.Response:
    return requests.post(f"{container.url}/invocations", data=body, timeout=120,
                         headers={"Content-Type": "application/json"})


def _good_request(container: ServingContainer, fhe: KeyedClient, up: Uploader,
                  index: int) -> None:
    row = fhe.model.scaled_test[index]
    response = _post(container, up.request(fhe, row[None, :],
                                           evaluation_keys_sha256=fhe.keys_sha))
    assert response.status_code == 200, response.content[:300]
    np.testing.assert_allclose(fhe.decrypt(response.content), fhe.expected(row))


def test_abandoned_request_keeps_the_worker_and_its_keys(
        served: ServingContainer, keyed: dict[str, KeyedClient], up: Uploader) -> None:
    fhe = keyed["tree"]
    _good_request(served, fhe, up, 0)
    before = _metrics(served)
    body = up.request(fhe, fhe.model.scaled_test[:BATCH_ROWS], batch=True,
                      evaluation_keys_sha256=fhe.keys_sha)
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type:"
                     b" application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(3)  # fetch done, FHE under way (40 rows take well over 10 s)
    deadline = time.monotonic() + 120
    while "abandoned by its caller" not in _logs(served):
        assert time.monotonic() < deadline, _logs(served)[-3000:]
        time.sleep(0.5)
    after = _metrics(served)
    logs = _logs(served)
    assert after["pid"] == before["pid"], logs[-3000:]
    assert "SIGSEGV" not in logs and "Broken pipe" not in logs, logs[-3000:]
    assert after["key_cache"]["memory_bytes"] == before["key_cache"]["memory_bytes"] > 0
    assert after["counters"]["abandoned"] == 1
    _good_request(served, fhe, up, 1)
    final = _metrics(served)
    assert final["pid"] == before["pid"]
    assert final["key_cache"]["deserializations"] == before["key_cache"]["deserializations"]


def test_600_mb_keys_are_refused_by_head_unread(
        served: ServingContainer, keyed: dict[str, KeyedClient], up: Uploader,
        own_s3: LocalS3Server, tmp_path: Path) -> None:
    fhe = keyed["tree"]
    sparse = tmp_path / "zeros"
    with open(sparse, "wb") as out:
        out.truncate(HUGE_KEYS_BYTES)
    key = f"{up.prefix}keys/huge.ekl"
    up.s3.upload_file(str(sparse), BUCKET, key)
    huge = f"s3://{BUCKET}/{key}"
    body = build_request(evaluation_keys_uri=huge, encrypted_query_uri=up.put(
        "queries/q.bin", fhe.encrypt(fhe.model.scaled_test[0])))
    response = _post(served, body)
    status, code, message = parse_error_body(response.content)
    assert (response.status_code, code) == (413, "PayloadTooLarge"), message
    assert status == 413 and f"has {HUGE_KEYS_BYTES} bytes" in message
    assert s3_requests(own_s3, "HEAD", huge) == 1
    assert s3_requests(own_s3, "GET", huge) == 0, "the oversized keys object was read"
    _good_request(served, fhe, up, 2)
