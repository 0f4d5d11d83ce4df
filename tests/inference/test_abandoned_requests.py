"""A caller that stops waiting never kills a worker (the real `serve`, nginx + gunicorn).

Before the fix, the first FHE run started concrete's HPX runtime, which replaced the worker's
ignored SIGPIPE with its termination handler: the reply to a closed connection killed the
worker (gunicorn: "was sent SIGSEGV"), and every tenant lost its deserialised keys.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests

from common.contract import parse_error_body
from inference import connection
from inference.connection import caller_gone, keep_sigpipe_ignored, sigpipe_ignored
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import (
    KeyedClient,
    RunningServe,
    Uploader,
    serve_process,
    server_settings,
    sm_runtime,
    wait_for_object,
)
from tests.security.conftest import make_runtime

BATCH_ROWS = 40  # ~10 s of FHE for the tree fixture: the caller gives up long before the end
ABANDONED = "abandoned by its caller"


@pytest.fixture(scope="module", params=["nginx", "gunicorn-alone"])
def serve(request: pytest.FixtureRequest, fixture_models: dict[str, FixtureModel],
          s3_server: LocalS3Server, serving_bucket: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServe]:
    """A `serve` of the tree model of this module only (behind nginx, or gunicorn alone)."""
    work = tmp_path_factory.mktemp(f"abandon-{request.param}")
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, work / "cache",
                               port=free_port(), host="127.0.0.1", timeout=120)
    flags = ("--no-nginx",) if request.param == "gunicorn-alone" else ()
    with serve_process(settings, work / "serve.log", extra_env=s3_server.env(),
                       flags=flags) as running:
        yield running


def _metrics(serve: RunningServe) -> dict[str, Any]:
    return json.loads(requests.get(f"{serve.url}/metrics", timeout=30).content)


def _post(serve: RunningServe, body: bytes) -> requests.Response:
    return requests.post(f"{serve.url}/invocations", data=body, timeout=120,
                         headers={"Content-Type": "application/json"})


def _wait_for_log(log: Path, text: str, *, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")


def _wait_for_cpu(pid: int, seconds: float, *, timeout: float = 60) -> None:
    """Block until the process has used ``seconds`` of CPU more than now (FHE under way)."""
    process = psutil.Process(pid)
    start = sum(process.cpu_times()[:2])
    deadline = time.monotonic() + timeout
    while sum(process.cpu_times()[:2]) - start < seconds:
        assert time.monotonic() < deadline, "the worker never started the FHE run"
        time.sleep(0.05)


def _warm(serve: RunningServe, fhe: KeyedClient, uploader: Uploader) -> dict[str, Any]:
    """One good request (the worker's HPX runtime starts, the keys get cached); the metrics."""
    row = fhe.model.scaled_test[0]
    response = _post(serve, uploader.request(fhe, row[None, :],
                                             evaluation_keys_sha256=fhe.keys_sha))
    assert response.status_code == 200, response.content[:300]
    np.testing.assert_allclose(fhe.decrypt(response.content), fhe.expected(row))
    return _metrics(serve)


def _assert_survived(serve: RunningServe, fhe: KeyedClient, uploader: Uploader,
                     before: dict[str, Any]) -> None:
    """Same worker, same cached keys, and the next request decrypts to the clear model."""
    after = _metrics(serve)
    assert after["pid"] == before["pid"], serve.log.read_text(errors="replace")[-3000:]
    assert after["counters"]["abandoned"] == before["counters"].get("abandoned", 0) + 1
    assert psutil.pid_exists(before["pid"])
    log = serve.log.read_text(errors="replace")
    assert "SIGSEGV" not in log and "Broken pipe" not in log, log[-3000:]
    assert log.count("Booting worker") == 1, log[-3000:]
    # HPX_HANDLE_SIGNALS=0 (serve's worker default) kept HPX from replacing it at all.
    assert "restored SIG_IGN" not in log, log[-3000:]
    assert after["key_cache"]["memory_bytes"] == before["key_cache"]["memory_bytes"] > 0
    row = fhe.model.scaled_test[1]
    response = _post(serve, uploader.request(fhe, row[None, :],
                                             evaluation_keys_sha256=fhe.keys_sha))
    assert response.status_code == 200, response.content[:300]
    np.testing.assert_allclose(fhe.decrypt(response.content), fhe.expected(row))
    final = _metrics(serve)
    assert final["pid"] == before["pid"]
    assert final["key_cache"]["deserializations"] == before["key_cache"]["deserializations"]
    assert final["key_cache"]["downloads"] == before["key_cache"]["downloads"]
    status = Path(f"/proc/{before['pid']}/status").read_text()
    ignored = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
    assert ignored >> (signal.SIGPIPE - 1) & 1, "SIGPIPE is no longer ignored in the worker"


def test_invocation_timeout_drops_the_result_and_keeps_the_worker(
        serve: RunningServe, keyed: dict[str, KeyedClient], uploader: Uploader, s3_server,
        serving_bucket: str) -> None:
    """The issue's case: InvocationTimeoutSeconds=1 on a 40-row batch through the runtime."""
    fhe = keyed["tree"]
    before = _warm(serve, fhe, uploader)
    body = uploader.request(fhe, fhe.model.scaled_test[:BATCH_ROWS], batch=True,
                            evaluation_keys_sha256=fhe.keys_sha)
    request_uri = uploader.put(f"requests/{uuid.uuid4().hex}.json", body)
    with make_runtime(serve.url, serving_bucket, uploader.s3) as runtime:
        answer = sm_runtime(runtime.url).invoke_endpoint_async(
            EndpointName=runtime.endpoint_name, InputLocation=request_uri,
            InvocationTimeoutSeconds=1)
        failure = wait_for_object(uploader.s3, answer["FailureLocation"], timeout=60)
    assert parse_error_body(failure)[:2] == (408, "InvocationTimeout")
    line = _wait_for_log(serve.log, ABANDONED)
    done = int(line.split(" after ")[1].split(" of ")[0])
    assert done < BATCH_ROWS, line  # the batch stopped between rows: no work for nobody
    _assert_survived(serve, fhe, uploader, before)


def test_socket_closed_mid_fhe_keeps_the_worker(serve: RunningServe,
                                                keyed: dict[str, KeyedClient],
                                                uploader: Uploader) -> None:
    """A caller that closes its own socket once the FHE run is under way."""
    fhe = keyed["tree"]
    before = _warm(serve, fhe, uploader)
    body = uploader.request(fhe, fhe.model.scaled_test[:BATCH_ROWS], batch=True,
                            evaluation_keys_sha256=fhe.keys_sha)
    logged = serve.log.read_text(errors="replace").count(ABANDONED)
    host, port = serve.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type:"
                     b" application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        _wait_for_cpu(before["pid"], 1.0)
    deadline = time.monotonic() + 90
    while serve.log.read_text(errors="replace").count(ABANDONED) == logged:
        assert time.monotonic() < deadline, serve.log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    _assert_survived(serve, fhe, uploader, before)


# -- the pieces, without a server ---------------------------------------------------------------


def test_caller_gone_sees_a_closed_peer_only() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(30)  # a socket with a timeout: the check must not wait for data
    with ours:
        environ = {connection.GUNICORN_SOCKET_KEY: ours}
        started = time.monotonic()
        assert not caller_gone(environ)  # connected, nothing sent
        assert time.monotonic() - started < 10
        theirs.sendall(b"GET /ping HTTP/1.1\r\n\r\n")  # a pipelined request is not a goodbye
        assert not caller_gone(environ)
        assert ours.recv(100)  # and the peek did not consume it
        theirs.close()
        assert caller_gone(environ)
    assert not caller_gone({})  # no socket (a test client): the caller is there


def test_a_replaced_sigpipe_handler_is_restored(caplog: pytest.LogCaptureFixture) -> None:
    previous = signal.getsignal(signal.SIGPIPE)
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # what a native runtime may do
        assert sigpipe_ignored() is False
        keep_sigpipe_ignored()
        assert sigpipe_ignored() is True
        assert "restored SIG_IGN" in caplog.text
    finally:
        signal.signal(signal.SIGPIPE, previous)
