"""The inference images, run as SageMaker runs them: ``docker run IMAGE serve``.

Every test runs on both targets of Dockerfile.inference: the default (FHEModelServer) and
``slim`` (concrete's compiler runtime alone).

It serves the model the training image made (the deployed form end to end), with the model
mounted read-only at /opt/ml/model and an embedded S3 on loopback. Encrypted predictions, sent
through SageMaker's async front end (the local runtime), must equal the clear quantised model of
the same job (its ``reference_model.json``) on every row.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from bench.images import (
    ImageBuild,
    ServingContainer,
    TrainingRun,
    docker,
    run_training,
    serving_container,
)
from client import EncryptedPredictor
from common.artifact import read_manifest
from common.contract import CONTENT_TYPE_JSON, build_request
from common.sagemaker_layout import JobLayout
from local_mode.processes import free_port
from local_mode.runtime import LocalAsyncRuntime
from local_mode.s3_server import LocalS3Server, local_session
from tests.containers.conftest import IMAGE_TEST_TIMEOUT, MEASURED, new_job

# The first test to need an image builds it (cold: minutes), inside its own time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]
BUCKET = "fhe-containers"
PLANTED_BUCKET = "fhe-planted"
ENDPOINT = "fhe-container-endpoint"
STOP_SECONDS = 30
ROUNDED_JOB = {"model": "NeuralNetClassifier", "scaler": "minmax", "max_epochs": 3,
               "rounding_bits": 5, "rounding_method": "approximate", "p_error": 0.1}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalS3Server, Path]]:
    """An S3 of its own (its request log shows what the container read) with two buckets."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with LocalS3Server(log_path=log) as server:
        client = local_session().client("s3", endpoint_url=server.endpoint_url)
        for bucket in (BUCKET, PLANTED_BUCKET):
            client.create_bucket(Bucket=bucket)
        yield server, log


@pytest.fixture(scope="module")
def model_dir(trained_job: tuple[JobLayout, TrainingRun]) -> Path:
    """The training image's model folder, readable by the serving image's user."""
    job, run = trained_job
    if run.returncode != 0:
        pytest.fail(f"the training job failed; see {run.log}", pytrace=False)
    job.model_dir.chmod(0o755)
    return job.model_dir


@pytest.fixture(scope="module", params=["inference_image", "slim_image"],
                ids=["default", "slim"])
def image(request: pytest.FixtureRequest) -> ImageBuild:
    """Each target of Dockerfile.inference in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def served(image: ImageBuild, model_dir: Path, s3: tuple[LocalS3Server, Path],
           container_logs: Path) -> Iterator[ServingContainer]:
    """``docker run IMAGE serve``, healthy."""
    server, _ = s3
    env = {**server.env(), "FHE_ALLOWED_S3_PREFIXES": f"s3://{BUCKET}/client"}
    name = image.tag.rsplit(":", 1)[-1]
    with serving_container(image.tag, model_dir=model_dir, port=free_port(), env=env,
                           log=container_logs / f"serve-{name}.log") as container:
        MEASURED[f"{image.tag} container: docker run -> healthy /ping"] = (
            f"{container.healthy_seconds:.1f} s")
        yield container


@contextmanager
def _async_predictor(server: LocalS3Server, container_url: str, model_dir: Path, tmp_path: Path,
                     *, batch_size: int) -> Iterator[EncryptedPredictor]:
    """The kit's client, through a local InvokeEndpointAsync runtime, to the container."""
    s3_client = local_session().client("s3", endpoint_url=server.endpoint_url)
    with (
        LocalAsyncRuntime(endpoint_name=ENDPOINT, container_url=container_url,
                          output_path=f"s3://{BUCKET}/async-out",
                          failure_path=f"s3://{BUCKET}/async-fail",
                          s3_client=s3_client) as runtime,
        EncryptedPredictor(ENDPOINT, model_dir, f"s3://{BUCKET}/client",
                           session=local_session(), s3_endpoint_url=server.endpoint_url,
                           runtime_endpoint_url=runtime.url, key_dir=tmp_path / "keys",
                           cache_dir=tmp_path / "cache", batch_size=batch_size, timeout=300,
                           progress=False) as predictor,
    ):
        yield predictor


def _processes(container: ServingContainer) -> list[dict[str, Any]]:
    """Every process in the container: pid, real/effective uid, command line."""
    script = (
        "import json, os\n"
        "out = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = open(f'/proc/{pid}/status').read().splitlines()\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ')\n"
        "    except OSError:\n"
        "        continue\n"
        "    uids = next(line for line in status if line.startswith('Uid:')).split()[1:]\n"
        "    out.append({'pid': int(pid), 'uids': [int(u) for u in uids],\n"
        "                'cmd': cmd.decode(errors='replace').strip()})\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(docker("exec", container.name, "python", "-c", script).stdout)


def test_ping_is_healthy_behind_nginx(served: ServingContainer) -> None:
    ping = requests.get(f"{served.url}/ping", timeout=5)
    assert ping.status_code == 200
    assert ping.headers["Server"].startswith("nginx/")
    unknown = requests.get(f"{served.url}/no-such-path", timeout=5)
    assert unknown.status_code == 404
    assert unknown.headers["Server"].startswith("nginx/")
    assert unknown.json()["error"]["code"] == "NotFound"


def test_every_process_runs_as_non_root(served: ServingContainer) -> None:
    processes = _processes(served)
    commands = " | ".join(p["cmd"] for p in processes)
    assert "nginx: master process" in commands and "nginx: worker process" in commands
    assert "gunicorn" in commands and "inference.serve" in commands
    root = [p for p in processes if 0 in p["uids"]]
    assert root == [], f"processes running as root: {root}"


def test_encrypted_predictions_equal_the_clear_quantised_model(
        served: ServingContainer, s3: tuple[LocalS3Server, Path], model_dir: Path,
        trained_job: tuple[JobLayout, TrainingRun], breast_cancer: tuple[np.ndarray, ...],
        tmp_path: Path) -> None:
    from concrete.ml.common.serialization.loaders import loads

    server, _ = s3
    job, _ = trained_job
    x = breast_cancer[1][:6]
    with _async_predictor(server, served.url, model_dir, tmp_path, batch_size=4) as predictor:
        proba = predictor.predict_proba(x)
        assert predictor.last_timings.requests == 2
    reference = loads((job.output_data_dir / "reference_model.json").read_text())
    scaled = read_manifest(model_dir).scaler.transform(x)
    np.testing.assert_allclose(proba, reference.predict_proba(scaled, fhe="disable"),
                               rtol=0, atol=1e-12)
    assert proba.shape == (6, 2)


def test_uri_outside_the_allow_list_is_refused_unread(
        served: ServingContainer, s3: tuple[LocalS3Server, Path]) -> None:
    server, moto_log = s3
    s3_client = local_session().client("s3", endpoint_url=server.endpoint_url)
    secret = f"secret-{uuid.uuid4().hex}"
    for key in (f"{secret}.ekl", f"{secret}.bin"):
        s3_client.put_object(Bucket=PLANTED_BUCKET, Key=key, Body=b"planted")
    body = build_request(evaluation_keys_uri=f"s3://{PLANTED_BUCKET}/{secret}.ekl",
                         encrypted_query_uri=f"s3://{PLANTED_BUCKET}/{secret}.bin")
    response = requests.post(f"{served.url}/invocations", data=body, timeout=30,
                             headers={"Content-Type": CONTENT_TYPE_JSON})
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (403, "AccessDenied")
    assert f"s3://{BUCKET}/client" in error["message"]
    requests_seen = [line for line in moto_log.read_text(errors="replace").splitlines()
                     if secret in line]
    assert len(requests_seen) == 2, requests_seen  # the log records requests: the two PUTs
    assert [line for line in requests_seen if '"PUT /' not in line] == []


@pytest.fixture(scope="module")
def rounded_model(training_image: ImageBuild, breast_cancer: tuple[np.ndarray, ...],
                  tmp_path_factory: pytest.TempPathFactory, container_logs: Path
                  ) -> tuple[JobLayout, Path]:
    """A network with rounded accumulators and p_error 0.1, trained by the training image."""
    x_train, _, y_train, _ = breast_cancer
    job = new_job(tmp_path_factory.mktemp("job-rounded"), ROUNDED_JOB, x_train, y_train)
    run = run_training(training_image.tag, job, job_name="fhe-rounded-job",
                       log=container_logs / "train-rounded.log")
    if run.returncode != 0:
        pytest.fail(f"the rounded training job failed; see {run.log}", pytrace=False)
    job.model_dir.chmod(0o755)
    return job, job.model_dir


def test_a_rounded_circuit_is_served_and_meets_its_statistical_oracle(
        inference_image: ImageBuild, rounded_model: tuple[JobLayout, Path],
        s3: tuple[LocalS3Server, Path], breast_cancer: tuple[np.ndarray, ...],
        container_logs: Path, tmp_path: Path) -> None:
    """Accumulator rounding and a raised p_error through both images unchanged: the circuit is
    not exact, so the decrypted classes meet the statistical oracle of bench/check.py."""
    from concrete.ml.common.serialization.loaders import loads

    from bench.check import check_circuit_agreement

    server, _ = s3
    job, model_dir = rounded_model
    manifest = read_manifest(model_dir)
    assert manifest.circuit["exact"] is False and manifest.circuit["p_error"] == 0.1
    x = breast_cancer[1][:12]
    env = {**server.env(), "FHE_ALLOWED_S3_PREFIXES": f"s3://{BUCKET}/client"}
    with (
        serving_container(inference_image.tag, model_dir=model_dir, port=free_port(), env=env,
                          log=container_logs / "serve-rounded.log") as container,
        _async_predictor(server, container.url, model_dir, tmp_path, batch_size=6) as predictor,
    ):
        proba = predictor.predict_proba(x)
        assert predictor.circuit == manifest.circuit
    reference = loads((job.output_data_dir / "reference_model.json").read_text())
    clear = reference.predict_proba(manifest.scaler.transform(x), fhe="disable")
    check = check_circuit_agreement(proba, clear, what="rounded network in the images",
                                    circuit=manifest.circuit)
    assert check["oracle"] == "statistical" and check["rows"] == 12


def test_sigterm_stops_it_with_exit_0(served: ServingContainer) -> None:
    """Last in this module: it stops the container."""
    started = time.monotonic()
    docker("kill", "--signal", signal.SIGTERM.name, served.name)
    code = docker("wait", served.name, timeout=STOP_SECONDS + 10).stdout.strip()
    elapsed = time.monotonic() - started
    assert code == "0"
    assert elapsed < STOP_SECONDS
