"""Faults: S3 down mid-flight, a gunicorn worker killed mid-FHE, the runtime stopped or killed
with queued requests, 8 concurrent clients with distinct key sets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import psutil
import pytest
import requests

from client import EncryptedPredictor
from client.errors import ServiceUnavailableError
from common.contract import build_request, parse_error_body
from local_mode.processes import free_port, wait_for_ping
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.serving import (
    KeyedClient,
    RunningServe,
    Uploader,
    serve_process,
    server_settings,
    sm_runtime,
    wait_for_object,
)
from tests.security.conftest import make_runtime, worker_pid


@pytest.fixture
def hanging_container() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (the backlog holds them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _request(uploader: Uploader, fhe: KeyedClient, row: np.ndarray) -> str:
    return uploader.put(f"requests/{uuid.uuid4().hex}.json", uploader.request(fhe, row[None, :]))


# -- the runtime stopped or killed with queued requests ------------------------------------------


def test_graceful_stop_fails_every_queued_invocation(hanging_container, serving_bucket, s3,
                                                     uploader) -> None:
    runtime = make_runtime(hanging_container, serving_bucket, s3, invocation_timeout=2).start()
    request = uploader.put("requests/any.json", b"{}")
    client = sm_runtime(runtime.url)
    responses = [client.invoke_endpoint_async(EndpointName=runtime.endpoint_name,
                                              InputLocation=request) for _ in range(4)]
    time.sleep(0.3)  # the first one is now waiting on the container
    runtime.stop()
    outcomes = [parse_error_body(wait_for_object(s3, r["FailureLocation"], timeout=10))[:2]
                for r in responses]
    assert outcomes[0] == (408, "InvocationTimeout")
    assert outcomes[1:] == [(503, "RuntimeStopped")] * 3


def test_stop_with_s3_down_and_no_journal_names_every_lost_invocation(
        hanging_container, tmp_path, caplog) -> None:
    """Without a journal, invocations that cannot be failed to S3 are logged as LOST by id."""
    server = LocalS3Server(log_path=tmp_path / "s3.log").start()
    try:
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=LOCAL_REGION)
        s3.create_bucket(Bucket="lost")
        s3.put_object(Bucket="lost", Key="requests/any.json", Body=b"{}")
        runtime = make_runtime(hanging_container, "lost", s3, invocation_timeout=2,
                               write_retry_seconds=0.5).start()
        client = sm_runtime(runtime.url)
        ids = [client.invoke_endpoint_async(EndpointName=runtime.endpoint_name,
                                            InputLocation="s3://lost/requests/any.json")
               ["InferenceId"] for _ in range(4)]
        time.sleep(0.3)  # one is now waiting on the hanging container; it times out after 2 s
    finally:
        server.stop()
    runtime.stop()
    lost = [r.getMessage() for r in caplog.records if " is LOST: " in r.getMessage()]
    assert sorted(m.split()[2] for m in lost) == sorted(ids)
    assert all("--journal-dir" in m for m in lost)


_RUNTIME_SCRIPT = """
import sys, threading, boto3
from local_mode.runtime import LocalAsyncRuntime
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
rt = LocalAsyncRuntime(endpoint_name="fhe-security-test", container_url=sys.argv[2],
                       output_path=sys.argv[3] + "/async-out",
                       failure_path=sys.argv[3] + "/async-fail",
                       s3_client=s3, journal_dir=sys.argv[4], port=int(sys.argv[5])).start()
print("ready", flush=True)
threading.Event().wait()
"""


def test_killed_runtime_replays_its_journal(hanging_container, tree_serve: RunningServe,
                                            serving_bucket, s3, s3_server, uploader, keyed,
                                            tmp_path) -> None:
    """kill -9 with 3 accepted invocations: a runtime started on the journal completes them."""
    fhe = keyed["tree"]
    rows = fhe.model.scaled_test[:3]
    journal = tmp_path / "journal"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNTIME_SCRIPT, s3_server.endpoint_url, hanging_container,
         f"s3://{serving_bucket}", str(journal), str(port)],
        stdout=subprocess.PIPE, env={**os.environ, **s3_server.env()})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        client = sm_runtime(f"http://127.0.0.1:{port}")
        responses = [client.invoke_endpoint_async(EndpointName="fhe-security-test",
                                                  InputLocation=_request(uploader, fhe, row))
                     for row in rows]
    finally:
        process.kill()
        process.wait()
    assert len(list(journal.glob("*.job.json"))) == 3
    with make_runtime(tree_serve.url, serving_bucket, s3, journal_dir=journal):
        for row, response in zip(rows, responses, strict=True):
            result = wait_for_object(s3, response["OutputLocation"])
            np.testing.assert_array_equal(fhe.decrypt(result), fhe.expected(row))
    assert list(journal.glob("*.job.json")) == []


# -- a worker killed mid-FHE ------------------------------------------------------------


def test_worker_killed_mid_fhe(tree_serve: RunningServe, serving_bucket, s3, uploader,
                               keyed) -> None:
    fhe = keyed["tree"]
    rows = fhe.model.scaled_test[:12]
    with make_runtime(tree_serve.url, serving_bucket, s3) as runtime:
        client = sm_runtime(runtime.url)
        warm = client.invoke_endpoint_async(EndpointName=runtime.endpoint_name,
                                            InputLocation=_request(uploader, fhe, rows[0]))
        wait_for_object(s3, warm["OutputLocation"])  # keys now deserialised in the worker
        pid = worker_pid(tree_serve.url)
        batch = uploader.put(f"requests/{uuid.uuid4().hex}.json",
                             uploader.request(fhe, rows, batch=True))
        doomed = client.invoke_endpoint_async(EndpointName=runtime.endpoint_name,
                                              InputLocation=batch)
        worker = psutil.Process(pid)
        start = sum(worker.cpu_times()[:2])
        deadline = time.monotonic() + 60
        while sum(worker.cpu_times()[:2]) - start < 1.0:  # FHE under way (12 rows take >10 s)
            assert time.monotonic() < deadline, "the worker never started the FHE run"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        status, code, message = parse_error_body(
            wait_for_object(s3, doomed["FailureLocation"], timeout=60))
        assert status is not None and status >= 500, (status, code, message)
        wait_for_ping(tree_serve.url, timeout=120)
        assert worker_pid(tree_serve.url) != pid
        after = client.invoke_endpoint_async(EndpointName=runtime.endpoint_name,
                                             InputLocation=_request(uploader, fhe, rows[1]))
        result = wait_for_object(s3, after["OutputLocation"])
        np.testing.assert_array_equal(fhe.decrypt(result), fhe.expected(rows[1]))


# -- S3 down mid-flight --------------------------------------------------------------------------


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[LocalS3Server]:
    """An S3 server of this test only (it gets stopped and restarted on the same port)."""
    server = LocalS3Server(log_path=tmp_path / "s3.log").start()
    try:
        yield server
    finally:
        server.stop()


def test_s3_outage_is_retryable_and_recovers(own_s3: LocalS3Server, fixture_models,
                                             tmp_path) -> None:
    bucket = "outage"
    model = fixture_models["linear"]
    rows = model.raw_test[:3]
    expected = model.clear_model.predict_proba(model.scaled_test[:3], fhe="disable")
    s3 = boto3.client("s3", endpoint_url=own_s3.endpoint_url, region_name=LOCAL_REGION)
    s3.create_bucket(Bucket=bucket)
    settings = server_settings(model, own_s3, bucket, tmp_path / "cache", port=free_port(),
                               host="127.0.0.1", timeout=60, s3_connect_timeout=1.0,
                               s3_read_timeout=2.0)
    with (serve_process(settings, tmp_path / "serve.log", extra_env=own_s3.env()) as serve,
          make_runtime(serve.url, bucket, s3, write_retry_seconds=60) as runtime,
          EncryptedPredictor(runtime.endpoint_name, model.model_dir, f"s3://{bucket}/fhe/c",
                             key_dir=tmp_path / "keys", s3_endpoint_url=own_s3.endpoint_url,
                             runtime_endpoint_url=runtime.url, region_name=LOCAL_REGION,
                             timeout=60, progress=False) as predictor):
        np.testing.assert_allclose(predictor.predict_proba(rows), expected, rtol=0, atol=1e-12)
        up = Uploader(s3, bucket, "fhe/direct/")
        body = build_request(evaluation_keys_uri=up.put("k.ekl", b"k"),
                             encrypted_query_uri=up.put("q.bin", b"q"))
        input_uri = up.put("r.json", body)

        own_s3.stop()
        # The container: S3 gone mid-request -> 503 with the contract's body, worker alive.
        response = requests.post(f"{serve.url}/invocations", data=body, timeout=60)
        assert response.status_code == 503
        assert parse_error_body(response.content)[1] == "StorageUnavailable"
        assert requests.get(f"{serve.url}/ping", timeout=10).status_code == 200
        # The runtime accepts the call, cannot read the input nor write the failure yet.
        pending = sm_runtime(runtime.url).invoke_endpoint_async(
            EndpointName=runtime.endpoint_name, InputLocation=input_uri)
        # The client: a clear, retryable error.
        with pytest.raises(ServiceUnavailableError, match="retry later") as info:
            predictor.predict_proba(rows)
        assert info.value.retryable

        own_s3.start()  # moto keeps state in memory: the bucket is gone
        s3.create_bucket(Bucket=bucket)
        status, code, _ = parse_error_body(wait_for_object(s3, pending["FailureLocation"], 90))
        assert (status, code) == (503, "InputUnavailable")
        uploads = predictor.timings.evaluation_key_uploads
        np.testing.assert_allclose(predictor.predict_proba(rows), expected, rtol=0, atol=1e-12)
        assert predictor.timings.evaluation_key_uploads == uploads + 1, "keys not re-uploaded"


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_clients_with_distinct_keys_at_once(tree_serve: RunningServe, serving_bucket, s3,
                                                  s3_server, fixture_models, tmp_path) -> None:
    model = fixture_models["tree"]
    n_clients, n_queries = 8, 4

    def one_client(index: int) -> tuple[str, list[np.ndarray]]:
        rows = model.raw_test[index * n_queries : (index + 1) * n_queries]
        with EncryptedPredictor(runtime.endpoint_name, model.model_dir,
                                f"s3://{serving_bucket}/fhe/client-{index}",
                                key_dir=tmp_path / f"keys-{index}", region_name=LOCAL_REGION,
                                s3_endpoint_url=s3_server.endpoint_url,
                                runtime_endpoint_url=runtime.url, timeout=300,
                                progress=False) as predictor:
            results = [predictor.predict_proba(row) for row in rows]
            return predictor.ensure_keys().evaluation_keys_sha256, results

    with (make_runtime(tree_serve.url, serving_bucket, s3, max_concurrency=2) as runtime,
          ThreadPoolExecutor(n_clients) as pool):
        outcomes = list(pool.map(one_client, range(n_clients)))
    assert len({sha for sha, _ in outcomes}) == n_clients, "key sets are not distinct"
    got = np.concatenate([np.concatenate(results) for _, results in outcomes])
    scaled = model.scaled_test[: n_clients * n_queries]
    np.testing.assert_allclose(got, model.clear_model.predict_proba(scaled, fhe="disable"),
                               rtol=0, atol=1e-12)
    assert got.shape == (n_clients * n_queries, 2)
