"""Retries on the real stack: ``deploy_endpoint.py --local`` (nginx + gunicorn + the local
runtime) on the session's S3 server, the client's predictions checked against the clear
quantised model.

A request sent right after its gunicorn worker was killed meets the new worker while it still
loads the model (``503 NotReady``, retryable in the contract's table): the client retries it,
logged, from the same uploaded objects, and its predictions still decrypt to the clear model's.
A refused request (``422 ModelMismatch``) is raised at once, never retried.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from client import EncryptedPredictor, RetryPolicy
from client.errors import InferenceFailedError
from local_mode.s3_server import LocalS3Server, local_session
from local_mode.stack import deploy_command, running_endpoint
from tests.fixtures.models import FixtureModel

pytestmark = pytest.mark.slow
ENDPOINT = "fhe-retry"
# Patient enough to outlast a model load on a busy machine, always inside the timeout.
PATIENT = RetryPolicy(max_attempts=40, base_delay=0.2, max_delay=2.0)


@pytest.fixture(scope="module")
def endpoint(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
             serving_bucket: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, str]]:
    """``deploy_endpoint.py --local`` of the tree model; its ready document."""
    work = tmp_path_factory.mktemp("retry-endpoint")
    command = [*deploy_command("unused")[:3], "--model-dir",
               str(fixture_models["tree"].model_dir)]
    with running_endpoint(
        command, endpoint_name=ENDPOINT, output_path=f"s3://{serving_bucket}/retry-out",
        failure_path=f"s3://{serving_bucket}/retry-fail",
        allowed_prefix=f"s3://{serving_bucket}/retry", env={**os.environ, **s3_server.env()},
        work_dir=work, log=work / "endpoint.log", s3_endpoint_url=s3_server.endpoint_url,
    ) as (_, ready):
        yield ready


def _predictor(endpoint: dict[str, str], model_dir: Path, bucket: str, key_dir: Path,
               **options: object) -> EncryptedPredictor:
    return EncryptedPredictor(
        ENDPOINT, model_dir, f"s3://{bucket}/retry/client", key_dir=key_dir,
        cache_dir=key_dir / "cache", session=local_session(),
        s3_endpoint_url=endpoint["s3_endpoint_url"], runtime_endpoint_url=endpoint["runtime_url"],
        progress=False, **options)


def _puts(server: LocalS3Server, bucket: str, folder: str) -> int:
    """PUT requests the S3 server logged under ``bucket``/retry/client/``folder``/."""
    assert server.log_path is not None
    pattern = re.escape(f"PUT /{bucket}/retry/client/{folder}/")
    return len(re.findall(pattern, server.log_path.read_text(errors="replace")))


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_a_request_that_meets_a_worker_restart_is_retried_and_decrypts_right(
        endpoint, fixture_models, s3_server, serving_bucket, tmp_path, caplog) -> None:
    tree = fixture_models["tree"]
    rows = tree.raw_test[:3]
    s3 = s3_server.client()
    with _predictor(endpoint, tree.model_dir, serving_bucket, tmp_path, retry=PATIENT,
                    timeout=180) as model:
        model.predict(rows[:1])  # keys made and uploaded, the worker warm
        pid = int(requests.get(f"{endpoint['serve_url']}/metrics", timeout=30).json()["pid"])
        queries, bodies = (_puts(s3_server, serving_bucket, f) for f in ("queries", "requests"))
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="client.retry"):
            proba = model.predict_proba(rows)
        seconds = time.monotonic() - started
        retries = model.last_timings.retries
    retried = [r.getMessage() for r in caplog.records if r.name == "client.retry"]
    print(f"\nretry log of a request that met a restart ({seconds:.1f} s):\n  "
          + "\n  ".join(retried))
    assert retried and all("503 NotReady" in m for m in retried), retried
    assert retries == len(retried)
    np.testing.assert_allclose(
        proba, tree.clear_model.predict_proba(tree.scaled_test[:3], fhe="disable"), atol=1e-12)
    # The same request and ciphertext objects were invoked again: nothing encrypted or uploaded
    # twice, and no object left behind (the spent failure objects included).
    assert (_puts(s3_server, serving_bucket, "queries") - queries,
            _puts(s3_server, serving_bucket, "requests") - bodies) == (1, 1)
    for prefix in ("retry/client/queries/", "retry/client/requests/", "retry-out/",
                   "retry-fail/"):
        assert _keys(s3, serving_bucket, prefix) == [], prefix


def test_a_refused_request_is_raised_at_once_without_a_retry(
        endpoint, fixture_models, serving_bucket, tmp_path, caplog) -> None:
    """Another model's client: the server refuses (422 ModelMismatch, not retryable)."""
    linear = fixture_models["linear"]
    with _predictor(endpoint, linear.model_dir, serving_bucket, tmp_path, retry=PATIENT) as model:
        model.ensure_keys()
        with caplog.at_level(logging.WARNING, logger="client.retry"), \
                pytest.raises(InferenceFailedError, match=r"\[422 ModelMismatch\]"):
            model.predict(linear.raw_test[:1])
        assert model.last_timings.retries == 0 and model.timings.retries == 0
    assert [r for r in caplog.records if r.name == "client.retry"] == []


def test_the_cli_retries_a_request_that_meets_a_worker_restart(
        endpoint, fixture_models, serving_bucket, tmp_path, caplog, monkeypatch) -> None:
    from client.cli import main

    tree = fixture_models["tree"]
    rows = tmp_path / "rows.npy"
    np.save(rows, tree.raw_test[:2])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint["s3_endpoint_url"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", endpoint["runtime_url"])
    argv = ["predict", "--endpoint-name", ENDPOINT, "--model", str(tree.model_dir),
            "--s3-prefix", f"s3://{serving_bucket}/retry/cli", "--input", str(rows),
            "--key-dir", str(tmp_path / "keys"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--max-attempts", "40", "--retry-base-delay", "0.2",
            "--retry-max-delay", "2"]
    assert main([*argv, "--output", str(tmp_path / "warm.npy")]) == 0
    pid = int(requests.get(f"{endpoint['serve_url']}/metrics", timeout=30).json()["pid"])
    os.kill(pid, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="client.retry"):
        assert main([*argv, "--output", str(tmp_path / "labels.npy"), "--proba"]) == 0
    retried = [r.getMessage() for r in caplog.records if r.name == "client.retry"]
    assert retried and all("503 NotReady" in m for m in retried), retried
    np.testing.assert_allclose(
        np.load(tmp_path / "labels.npy"),
        tree.clear_model.predict_proba(tree.scaled_test[:2], fhe="disable"), atol=1e-12)


def test_the_cli_refuses_a_bad_retry_policy(fixture_models, tmp_path, capsys) -> None:
    from client.cli import main

    code = main(["predict", "--endpoint-name", "e", "--model",
                 str(fixture_models["linear"].model_dir), "--s3-prefix", "s3://bucket/p",
                 "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                 "--max-attempts", "0", "--retry-base-delay", "-1", "--region", "us-east-1"])
    assert code == 2
    assert ("error: bad retry policy: max_attempts must be an integer >= 1, got 0;"
            " base_delay must be > 0 seconds, got -1.0") in capsys.readouterr().err
