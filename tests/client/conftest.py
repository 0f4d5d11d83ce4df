"""Fixtures for the client tests: model archives in S3, a moto sagemaker-runtime."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel


def make_model_tar(model_dir: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    """A SageMaker-style model.tar.gz of ``model_dir`` (files at the top level)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def upload_model(s3_client, bucket: str) -> Callable[[FixtureModel], str]:
    """Upload a fixture model as model.tar.gz; return its s3:// URI."""

    def upload(model: FixtureModel, key: str = "job/output/model.tar.gz") -> str:
        s3_client.put_object(Bucket=bucket, Key=key, Body=make_model_tar(model.model_dir))
        return f"s3://{bucket}/{key}"

    return upload


@pytest.fixture
def moto_async_results(s3_server: LocalS3Server) -> Callable[[list[dict[str, object]]], None]:
    """Queue the results moto's sagemaker-runtime gives the next invoke_endpoint_async calls.

    moto (the AWS control-plane mock) writes each result to an S3 output or failure object
    before answering, as SageMaker would once the container finished.
    """

    def configure(results: list[dict[str, object]]) -> None:
        response = requests.post(
            f"{s3_server.endpoint_url}/moto-api/static/sagemaker/async-endpoint-results",
            data=json.dumps({"results": results}),
            timeout=10,
        )
        response.raise_for_status()

    return configure


@pytest.fixture
def client_dirs(tmp_path: Path) -> dict[str, Path]:
    """Fresh key and cache directories."""
    return {"key_dir": tmp_path / "keys", "cache_dir": tmp_path / "cache"}
