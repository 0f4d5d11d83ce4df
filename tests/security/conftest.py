"""Fixtures of the security and fault tests: a `serve` of their own (its worker gets killed),
an in-process async runtime in front of it, boto3 clients of the session S3 server.

The serving helpers are shared: ``tests/fixtures/serving.py`` (serve process, runtime clients,
object waits, settings, uploader, keyed clients) and ``tests/conftest.py`` (their fixtures).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests

from local_mode.processes import free_port
from local_mode.runtime import LocalAsyncRuntime
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import RunningServe, serve_process, server_settings

ENDPOINT = "fhe-security-test"


@pytest.fixture(scope="session")
def tree_serve(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
               serving_bucket: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningServe]:
    """This package's own `serve` of the tree model (one worker; tests may kill it)."""
    work = tmp_path_factory.mktemp("security-serve")
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, work / "cache",
                               port=free_port(), host="127.0.0.1", timeout=120,
                               key_cache_max_bytes=400 << 20)
    with serve_process(settings, work / "serve.log", extra_env=s3_server.env()) as serve:
        yield serve


def worker_pid(url: str) -> int:
    """The pid of the gunicorn worker answering at ``url`` (from ``GET /metrics``)."""
    return int(requests.get(f"{url}/metrics", timeout=30).json()["pid"])


@pytest.fixture
def s3(s3_server: LocalS3Server) -> Any:
    """A boto3 S3 client of the session S3 server."""
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)


def make_runtime(container_url: str, bucket: str, s3_client: Any, **options: Any
                 ) -> LocalAsyncRuntime:
    """A local async runtime for ``container_url`` writing under ``bucket``/async-*."""
    values: dict[str, Any] = {"max_concurrency": 1, "invocation_timeout": 120, **options}
    return LocalAsyncRuntime(endpoint_name=ENDPOINT, container_url=container_url,
                             output_path=f"s3://{bucket}/async-out",
                             failure_path=f"s3://{bucket}/async-fail", s3_client=s3_client,
                             **values)
