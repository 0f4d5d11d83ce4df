"""Reference mode: the client with a model the AWS sample's way (no manifest.json), end to end."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from client import EncryptedPredictor
from client.errors import VersionMismatchError
from client.model import describe, load_client_model
from common.artifact import NoScaler, file_sha256
from local_mode.processes import wait_for_ready_file
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import breast_cancer_split

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PlainModel:
    """A model saved with ``FHEModelDev(dir, model).save()`` only, as the sample's training does."""

    model_dir: Path
    archive: Path
    clear_model: Any
    x_test: np.ndarray


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> PlainModel:
    from concrete.ml.deployment import FHEModelDev
    from concrete.ml.sklearn import DecisionTreeClassifier

    root = tmp_path_factory.mktemp("plain")
    x_train, x_test, y_train, _ = breast_cancer_split()
    model = DecisionTreeClassifier(n_bits=3, max_depth=2, random_state=0).fit(x_train, y_train)
    model.compile(x_train)
    FHEModelDev(str(root / "model"), model).save()
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((root / "model").iterdir()):
            tar.add(path, arcname=path.name)
    return PlainModel(root / "model", archive, model, x_test)


def test_a_manifest_less_archive_loads_in_reference_mode(plain_model: PlainModel, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    assert sorted(p.name for p in plain_model.model_dir.iterdir()) == ["client.zip", "server.zip"]
    with caplog.at_level(logging.WARNING, logger="client.model"):
        model = load_client_model(plain_model.archive, storage=None, cache_dir=tmp_path)
    assert model.reference_mode
    m = model.manifest
    assert (m.model_class, m.task, m.n_features, m.classes) == (
        "DecisionTreeClassifier", "classification", 30, ())
    assert m.scaler == NoScaler(30)
    assert model.fingerprint == file_sha256(plain_model.model_dir / "client.zip")
    assert m.versions["concrete-ml"] == "1.9.0"
    assert describe(model)["mode"] == "reference (no manifest.json)"
    [warning] = [r for r in caplog.records if r.name == "client.model"]
    assert "reference mode" in warning.getMessage()
    assert "no scaler" in warning.getMessage()
    # Cached: the second load reads nothing from the archive again.
    assert load_client_model(plain_model.archive, storage=None, cache_dir=tmp_path).model_dir \
        == model.model_dir


def _with_versions(client_zip: Path, target: Path, **versions: str) -> None:
    """Copy client.zip with its versions.json replaced."""
    with zipfile.ZipFile(client_zip) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "versions.json":
                data = json.dumps({**json.loads(data), **versions}).encode()
            out.writestr(item, data)


def test_versions_are_checked_from_client_zip_before_concrete_loads_it(
        plain_model: PlainModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _with_versions(plain_model.model_dir / "client.zip", model_dir / "client.zip",
                   python="3.9.1", **{"concrete-ml": "1.8.0"})
    import concrete.ml.deployment as deployment

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("FHEModelClient must not be reached")

    monkeypatch.setattr(deployment, "FHEModelClient", boom)
    with pytest.raises(VersionMismatchError, match=r"Python: model built with 3\.9\.1(.|\n)*"
                                                   r"concrete-ml: model built with 1\.8\.0"):
        load_client_model(model_dir, storage=None, cache_dir=tmp_path / "cache")


@dataclass(frozen=True)
class Endpoint:
    name: str
    bucket: str
    model_data: str
    runtime_url: str
    s3_url: str


@pytest.fixture(scope="module")
def plain_endpoint(plain_model: PlainModel, s3_server: LocalS3Server,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """deploy_endpoint.py --local serving the manifest-less model.tar.gz from S3."""
    work = tmp_path_factory.mktemp("plain-endpoint")
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    bucket = f"plain-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(plain_model.archive), bucket, "MNIST/job/output/model.tar.gz")
    model_data = f"s3://{bucket}/MNIST/job/output/model.tar.gz"
    ready = work / "ready.json"
    log = work / "endpoint.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "deploy_endpoint.py", "--local", "--endpoint-name", "plain",
             "--model-data", model_data, "--output-path", f"s3://{bucket}/async/output",
             "--failure-path", f"s3://{bucket}/async/failures", "--ready-file", str(ready)],
            cwd=ROOT, env={**os.environ, **s3_server.env()}, stdout=out, stderr=subprocess.STDOUT)
    try:
        info = wait_for_ready_file(ready, timeout=300, process=process, log=log)
        yield Endpoint("plain", bucket, model_data, info["runtime_url"], s3_server.endpoint_url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.slow
def test_our_client_serves_a_model_the_sample_trained(plain_model: PlainModel,
                                                      plain_endpoint: Endpoint,
                                                      tmp_path: Path) -> None:
    x = plain_model.x_test[:3]
    with EncryptedPredictor(
        plain_endpoint.name, plain_endpoint.model_data, f"s3://{plain_endpoint.bucket}/client",
        session=boto3.session.Session(region_name=LOCAL_REGION),
        s3_endpoint_url=plain_endpoint.s3_url, runtime_endpoint_url=plain_endpoint.runtime_url,
        key_dir=tmp_path / "keys", cache_dir=tmp_path / "cache", keep_objects=True,
        progress=False, batch_size=32,
    ) as predictor:
        assert predictor.model.reference_mode
        proba = predictor.predict_proba(x)
        labels = predictor.predict(x)
        timings = predictor.timings
    clear = plain_model.clear_model
    np.testing.assert_allclose(proba, clear.predict_proba(x, fhe="disable"), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(labels, clear.predict(x, fhe="disable"))
    assert timings.requests == 6  # one row per request, whatever batch_size says

    s3 = boto3.client("s3", endpoint_url=plain_endpoint.s3_url, region_name=LOCAL_REGION)
    listing = s3.list_objects_v2(Bucket=plain_endpoint.bucket, Prefix="client/requests/")
    requests = [json.loads(s3.get_object(Bucket=plain_endpoint.bucket, Key=o["Key"])["Body"].read())
                for o in listing["Contents"]]
    assert len(requests) == 6
    for request in requests:  # exactly what the sample's server requires, nothing else
        assert sorted(request) == ["encrypted_query_uri", "evaluation_keys_uri"]
        assert request["encrypted_query_uri"].endswith(".bin")
    outputs = s3.list_objects_v2(Bucket=plain_endpoint.bucket, Prefix="async/output/")["Contents"]
    assert len(outputs) == 6
    first = s3.get_object(Bucket=plain_endpoint.bucket, Key=outputs[0]["Key"])["Body"].read()
    assert not first.startswith(b"FHEB")  # the raw result, not the batch framing


def test_a_manifest_less_model_still_honours_the_expected_fingerprint(
        plain_model: PlainModel, tmp_path: Path) -> None:
    """No manifest, but client.zip's sha256 is still compared with what the caller expects."""
    from client.errors import FingerprintMismatchError

    actual = file_sha256(plain_model.model_dir / "client.zip")
    model = load_client_model(plain_model.archive, storage=None, cache_dir=tmp_path,
                              expected_fingerprint=actual)
    assert model.reference_mode and model.fingerprint == actual
    with pytest.raises(FingerprintMismatchError,
                       match=rf"sha256\(client\.zip\) is {actual} but {'0' * 64} was expected;"
                             r" point at the model the endpoint serves"):
        load_client_model(plain_model.archive, storage=None, cache_dir=tmp_path,
                          expected_fingerprint="0" * 64)
