"""Fixtures shared by the whole suite: a real moto S3 server over HTTP, tiny model artefacts,
keyed clients and uploads of the serving tests, one real `serve` per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

import common.pytest_plugin
from local_mode.processes import free_port
from local_mode.s3_server import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel, build_fixture_model
from tests.fixtures.serving import (
    ALLOWED_PREFIX,
    KeyedClient,
    RunningServe,
    Uploader,
    make_keyed_client,
    serve_process,
    server_settings,
)

# No test may reach real AWS: fake credentials and a fixed region for every test process,
# and the SageMaker SDK's telemetry/config lookups switched off.
os.environ.update(LOCAL_CREDENTIALS)
os.environ["AWS_DEFAULT_REGION"] = LOCAL_REGION
os.environ.setdefault(
    "SAGEMAKER_USER_CONFIG_OVERRIDE", str(Path(__file__).parent / "sagemaker_config.yaml")
)
os.environ.pop("AWS_PROFILE", None)


def pytest_configure(config: pytest.Config) -> None:
    """Keep the exit status honest even where the kit's pytest11 entry point is not installed."""
    if not config.pluginmanager.is_registered(common.pytest_plugin):
        config.pluginmanager.register(common.pytest_plugin, "fhe-exit-status")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """One moto S3 server process on loopback for the whole session."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with LocalS3Server(log_path=log) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 in this process (and subprocesses given os.environ) at the S3 server."""
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_client(s3_server: LocalS3Server):
    """A boto3 S3 client talking HTTP to the moto server."""
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)


@pytest.fixture
def bucket(s3_client) -> str:
    """A fresh, empty bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FixtureModel]:
    """Tiny compiled breast-cancer models, built once per session: {"linear", "tree"}."""
    root = tmp_path_factory.mktemp("models")
    return {kind: build_fixture_model(kind, root / kind) for kind in ("linear", "tree")}


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


@pytest.fixture
def uploader(s3_server: LocalS3Server, serving_bucket: str) -> Uploader:
    """An uploader under a fresh allowed prefix."""
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    return Uploader(s3, serving_bucket, f"{ALLOWED_PREFIX}{uuid.uuid4().hex[:8]}/")


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
