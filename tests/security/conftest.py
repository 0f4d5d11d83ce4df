"""Fixtures of the security and fault tests: a `serve` of their own (its worker gets killed),
an in-process async runtime in front of it, boto3 clients of the session S3 server.

The serving helpers (settings, uploader, keyed clients, ping wait) are reused from
``tests/inference/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from inference.local.runtime import LocalAsyncRuntime
from inference.local.s3_server import LOCAL_REGION, LocalS3Server, free_port
from inference.settings import Settings
from tests.fixtures.models import FixtureModel
from tests.inference import conftest as serving_fixtures
from tests.inference.conftest import RunningServe, _wait_ping, server_settings

# The serving tests' fixtures, shared with this package (keys generated once per session).
keyed = serving_fixtures.keyed
serving_bucket = serving_fixtures.serving_bucket
uploader = serving_fixtures.uploader

ENDPOINT = "fhe-security-test"


@contextmanager
def serve_process(settings: Settings, log: Path, *, extra_env: dict[str, str] | None = None
                  ) -> Iterator[RunningServe]:
    """Run the real `serve` (nginx + gunicorn) with ``settings``; stop it with SIGTERM."""
    env = {**os.environ, **(extra_env or {}), **settings.to_env()}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "inference.serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{settings.host}:{settings.port}"
    try:
        _wait_ping(url, process)
        yield RunningServe(url, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def wait_healthy(url: str, timeout: float = 120) -> None:
    """Wait until ``GET /ping`` answers 200 (a new worker has loaded the model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/ping not healthy within {timeout} s")


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


def sm_runtime(url: str) -> Any:
    """A boto3 sagemaker-runtime client of a local runtime."""
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name=LOCAL_REGION)


def wait_for_object(s3_client: Any, uri: str, timeout: float = 120) -> bytes:
    """Poll until the object at ``uri`` exists; return its body."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3_client.exceptions.NoSuchKey:
            time.sleep(0.05)
    raise AssertionError(f"{uri} did not appear within {timeout} s")
