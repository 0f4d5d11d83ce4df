"""The real `serve` (nginx + gunicorn) on loopback against the moto S3 server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from common.contract import build_request, parse_error_body, unpack_batch
from inference.serve import WORKER_ENV_DEFAULTS, render_nginx_conf, worker_env
from inference.settings import Settings
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import (
    KeyedClient,
    RunningServe,
    Uploader,
    assert_nginx_in_front,
    make_keyed_client,
    serve_process,
    server_settings,
)


def post(serve: RunningServe, body: bytes) -> requests.Response:
    return requests.post(f"{serve.url}/invocations", data=body,
                         headers={"Content-Type": "application/json"}, timeout=120)


def test_nginx_fronts_gunicorn(running_serve: RunningServe) -> None:
    assert_nginx_in_front(running_serve.url, running_serve.log)
    assert requests.get(f"{running_serve.url}/ping", timeout=5).status_code == 200


def test_single_and_batch_queries(running_serve: RunningServe, keyed: dict[str, KeyedClient],
                                  uploader: Uploader) -> None:
    fhe = keyed["tree"]
    rows = fhe.model.scaled_test[:3]
    single = post(running_serve, uploader.request(fhe, rows[:1]))
    assert single.status_code == 200, single.content[:300]
    np.testing.assert_allclose(fhe.decrypt(single.content), fhe.expected(rows[0]))
    batch = post(running_serve, uploader.request(fhe, rows, batch=True))
    assert batch.status_code == 200, batch.content[:300]
    for result, row in zip(unpack_batch(batch.content), rows, strict=True):
        np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))


def test_errors_through_the_stack_then_a_good_query(
        running_serve: RunningServe, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    """Includes keys of another circuit, which would abort the worker if they reached concrete."""
    fhe = keyed["tree"]
    bad_json = post(running_serve, b"{")
    assert bad_json.status_code == 400
    assert parse_error_body(bad_json.content)[1] == "BadRequest"
    denied = post(running_serve, build_request(evaluation_keys_uri="s3://elsewhere/k",
                                               encrypted_query_uri="s3://elsewhere/q"))
    assert denied.status_code == 403
    assert "may not read s3://elsewhere/k, s3://elsewhere/q" in parse_error_body(denied.content)[2]
    foreign = keyed["linear"]
    mismatch = post(running_serve, build_request(
        evaluation_keys_uri=uploader.keys(foreign),
        encrypted_query_uri=uploader.put("q", fhe.encrypt(fhe.model.scaled_test[0]))))
    assert mismatch.status_code == 422, mismatch.content
    good = post(running_serve, uploader.request(fhe, fhe.model.scaled_test[:1]))
    assert good.status_code == 200
    np.testing.assert_allclose(fhe.decrypt(good.content), fhe.expected(fhe.model.scaled_test[0]))


def test_two_key_sets_concurrently(running_serve: RunningServe,
                                   fixture_models: dict[str, FixtureModel],
                                   uploader: Uploader, tmp_path: Path) -> None:
    first = make_keyed_client(fixture_models["tree"], tmp_path / "first")
    second = make_keyed_client(fixture_models["tree"], tmp_path / "second")
    assert first.keys_sha != second.keys_sha
    jobs = [(client, row) for row in fixture_models["tree"].scaled_test[5:8]
            for client in (first, second)]
    bodies = [uploader.request(c, row[None, :], evaluation_keys_sha256=c.keys_sha)
              for c, row in jobs]
    before = _key_cache(running_serve)
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda b: post(running_serve, b), bodies))
    for (client, row), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.content[:300]
        np.testing.assert_allclose(client.decrypt(response.content), client.expected(row))
    after = _key_cache(running_serve)
    # One worker: each fresh key set is downloaded and deserialised exactly once for 3 queries.
    assert after["downloads"] - before["downloads"] == 2
    assert after["deserializations"] - before["deserializations"] == 2
    assert after["memory_hits"] - before["memory_hits"] == 4


def _key_cache(serve: RunningServe) -> dict[str, int]:
    return json.loads(requests.get(f"{serve.url}/metrics", timeout=5).content)["key_cache"]


def test_workers_run_fhe_with_the_runtime_thread_defaults(running_serve: RunningServe) -> None:
    pid = json.loads(requests.get(f"{running_serve.url}/metrics", timeout=5).content)["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for name, value in WORKER_ENV_DEFAULTS.items():
        assert f"{name}={value}".encode() in environ


def test_worker_env_keeps_an_explicit_runtime_setting() -> None:
    settings = Settings(port=8123)
    env = worker_env(settings, {"KMP_BLOCKTIME": "50", "SAGEMAKER_BIND_TO_PORT": "1"})
    assert env["KMP_BLOCKTIME"] == "50"  # the operator's choice wins
    assert env["SAGEMAKER_BIND_TO_PORT"] == "8123"  # the settings win over the environ
    assert worker_env(settings, {})["KMP_BLOCKTIME"] == WORKER_ENV_DEFAULTS["KMP_BLOCKTIME"]


def test_nginx_waits_longer_than_gunicorn(tmp_path: Path) -> None:
    settings = Settings(timeout=300, max_request_bytes=1234, port=9999, host="127.0.0.1")
    conf = render_nginx_conf(settings, runtime_dir=tmp_path, socket_path=tmp_path / "g.sock")
    assert "proxy_read_timeout 310s;" in conf
    assert "client_max_body_size 1234;" in conf
    assert "listen 127.0.0.1:9999;" in conf
    assert f"server unix:{tmp_path / 'g.sock'};" in conf


@pytest.mark.parametrize("flag", [["--no-nginx"]])
def test_serve_without_nginx_binds_gunicorn_and_says_so(
        flag: list[str], fixture_models: dict[str, FixtureModel], tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from local_mode.processes import free_port, wait_for_ping

    port = free_port()
    env = {**os.environ, **Settings(model_dir=fixture_models["linear"].model_dir, port=port,
                                    host="127.0.0.1", key_cache_dir=tmp_path).to_env()}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "inference.serve", *flag], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_ping(f"http://127.0.0.1:{port}", timeout=120, process=process)
        assert "nginx disabled: gunicorn binds 127.0.0.1:" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@pytest.mark.parametrize("flags", [(), ("--no-nginx",)], ids=["nginx", "gunicorn-alone"])
def test_a_body_over_the_limit_is_413_json_however_it_is_framed(
        flags: tuple[str, ...], fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
        serving_bucket: str, keyed: dict[str, KeyedClient], uploader: Uploader,
        tmp_path: Path) -> None:
    """Class 3 of issue 10: gunicorn alone cut a chunked body at the limit and parsed it."""
    fhe = keyed["linear"]
    good = uploader.request(fhe, fhe.model.scaled_test[:1])
    limit = len(good) + 100
    over = good[:-1] + b" " * 101 + b"}"  # valid JSON, one byte over
    settings = server_settings(fixture_models["linear"], s3_server, serving_bucket,
                               tmp_path / "cache", port=free_port(), host="127.0.0.1",
                               timeout=60, max_request_bytes=limit)
    with serve_process(settings, tmp_path / "serve.log", extra_env=s3_server.env(),
                       flags=flags) as serve:
        for name, data in (("content-length", over), ("chunked", iter([over[:50], over[50:]]))):
            response = requests.post(f"{serve.url}/invocations", data=data, timeout=60,
                                     headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (name, response.content[:300])
            assert response.headers["Content-Type"].startswith("application/json"), name
            assert parse_error_body(response.content) == (
                413, "PayloadTooLarge", f"request body is over {limit} bytes: send S3 URIs, not"
                " data (or raise FHE_MAX_REQUEST_BYTES)"), name
        response = requests.post(f"{serve.url}/invocations", timeout=60,
                                 data=iter([good[:50], good[50:]]),
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.content[:300]
        np.testing.assert_allclose(fhe.decrypt(response.content),
                                   fhe.expected(fhe.model.scaled_test[0]))
