"""The Flask app in-process (Flask test client) against the real moto S3 server."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from common.contract import (
    CONTENT_TYPE_BATCH,
    CONTENT_TYPE_RESULT,
    build_request,
    pack_batch,
    parse_error_body,
    sha256_hex,
    unpack_batch,
)
from inference.predictor import create_app
from inference.runtimes import RUNTIMES
from inference.s3_store import make_s3_client
from inference.settings import parse_allowed_prefix
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.s3_reads import S3RequestLog
from tests.fixtures.serving import (
    KeyedClient,
    Uploader,
    make_keyed_client,
    s3_requests,
    server_settings,
)

AppFactory = Callable[..., FlaskClient]


@pytest.fixture
def make_client(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
                serving_bucket: str, tmp_path: Path) -> AppFactory:
    """Build a test client of an app serving fixture model ``kind``, with setting overrides."""

    def make(kind: str = "tree", **overrides: Any) -> FlaskClient:
        overrides.setdefault("circuit_cache_dir", tmp_path / "circuits")
        settings = server_settings(fixture_models[kind], s3_server, serving_bucket,
                                   tmp_path / f"cache-{uuid.uuid4().hex[:6]}", **overrides)
        return create_app(settings).test_client()

    return make


def invoke(client: FlaskClient, body: bytes) -> Any:
    return client.post("/invocations", data=body, content_type="application/json")


def assert_error(response: Any, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/json"
    got_status, got_code, got_message = parse_error_body(response.data)
    assert (got_status, got_code) == (status, code)
    assert message in got_message, got_message
    assert b"Traceback" not in response.data


def metrics(client: FlaskClient) -> dict[str, Any]:
    return json.loads(client.get("/metrics").data)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_single_query_decrypts_to_clear_quantised_prediction(
        kind: str, runtime: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    client, fhe = make_client(kind, runtime=runtime), keyed[kind]
    row = fhe.model.scaled_test[0]
    response = invoke(client, uploader.request(fhe, row[None, :],
                                               model_fingerprint=fhe.model.manifest.client_fingerprint))
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == CONTENT_TYPE_RESULT
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(row))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_batch_of_uris_returns_one_result_per_row_in_order(
        kind: str, runtime: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    client, fhe = make_client(kind, runtime=runtime), keyed[kind]
    rows = fhe.model.scaled_test[:3]
    response = invoke(client, uploader.request(fhe, rows, batch=True))
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == CONTENT_TYPE_BATCH
    results = unpack_batch(response.data)
    assert len(results) == 3
    for result, row in zip(results, rows, strict=True):
        np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))


def test_packed_batch_object_with_verified_hashes(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    rows = fhe.model.scaled_test[3:5]
    packed = pack_batch([fhe.encrypt(row) for row in rows])
    body = build_request(evaluation_keys_uri=uploader.keys(fhe),
                         encrypted_batch_uri=uploader.put("queries/b.fheb", packed),
                         evaluation_keys_sha256=fhe.keys_sha,
                         encrypted_query_sha256=sha256_hex(packed))
    response = invoke(client, body)
    assert response.status_code == 200, response.data[:300]
    for result, row in zip(unpack_batch(response.data), rows, strict=True):
        np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))


def test_named_keys_are_downloaded_and_deserialised_once(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    for row in fhe.model.scaled_test[:2]:  # downloaded, then served from memory
        body = uploader.request(fhe, row[None, :], evaluation_keys_sha256=fhe.keys_sha)
        _assert_decrypts(invoke(client, body), fhe, row)
    cache = metrics(client)["key_cache"]
    assert (cache["downloads"], cache["deserializations"], cache["memory_hits"]) == (1, 1, 1)


def _assert_decrypts(response: Any, fhe: KeyedClient, row: np.ndarray) -> None:
    """The answer decrypts to the clear quantised model's prediction of ``row``."""
    assert response.status_code == 200, response.data[:300]
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(row))


def _unnamed(fhe: KeyedClient, uploader: Uploader, row: np.ndarray, keys_uri: str) -> bytes:
    """A request as the AWS sample's client sends it: two URIs, no hashes."""
    query = uploader.put(f"queries/{uuid.uuid4().hex}.bin", fhe.encrypt(row))
    return build_request(evaluation_keys_uri=keys_uri, encrypted_query_uri=query)


def _assert_predicts(client: FlaskClient, fhe: KeyedClient, uploader: Uploader,
                     rows: np.ndarray, keys_uri: str) -> None:
    for row in rows:
        response = invoke(client, _unnamed(fhe, uploader, row, keys_uri))
        assert response.status_code == 200, response.data[:300]
        np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(row))


def test_unnamed_keys_are_downloaded_once_while_the_object_is_unchanged(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    keys_uri = uploader.keys(fhe)
    _assert_predicts(client, fhe, uploader, fhe.model.scaled_test[:3], keys_uri)
    assert uploader.keys(fhe) == keys_uri  # the same bytes again, as a client re-uploads them
    _assert_predicts(client, fhe, uploader, fhe.model.scaled_test[3:5], keys_uri)
    assert s3_requests(s3_server, "GET", keys_uri) == 1
    assert s3_requests(s3_server, "HEAD", keys_uri) == 5
    cache = metrics(client)["key_cache"]
    assert (cache["downloads"], cache["download_bytes"], cache["deserializations"],
            cache["revalidations"], cache["revalidated_hits"]) == (1, len(fhe.keys), 1, 5, 4)


def test_unnamed_keys_overwritten_in_place_are_downloaded_again(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server, tmp_path: Path) -> None:
    client, first = make_client("tree"), keyed["tree"]
    second = make_keyed_client(first.model, tmp_path / "other-keys")
    assert second.keys_sha != first.keys_sha
    keys_uri = uploader.put("keys/client.ekl", first.keys)
    _assert_predicts(client, first, uploader, first.model.scaled_test[:2], keys_uri)
    assert uploader.put("keys/client.ekl", second.keys) == keys_uri
    # Queries encrypted under the new secret key decrypt right only if the new keys are used.
    _assert_predicts(client, second, uploader, first.model.scaled_test[2:5], keys_uri)
    assert s3_requests(s3_server, "GET", keys_uri) == 2
    cache = metrics(client)["key_cache"]
    assert (cache["downloads"], cache["download_bytes"], cache["deserializations"]) == (
        2, len(first.keys) + len(second.keys), 2)


def test_unnamed_keys_overwritten_between_head_and_get_are_cached_as_what_was_read(
        fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
        keyed: dict[str, KeyedClient], uploader: Uploader, tmp_path: Path) -> None:
    """A -> B -> A: the keys object holds A when the server checks it, B when it reads it, then
    A again (same bytes: same ETag). The cache must remember B under B's version, so the next
    request, whose check sees A's version again, downloads A rather than serve B's keys."""
    first = keyed["tree"]  # a circuit with bootstraps: the wrong keys give wrong answers
    second = make_keyed_client(first.model, tmp_path / "b-keys")
    keys_uri = uploader.put("keys/shared.ekl", first.keys)
    keys_key = keys_uri.split("/", 3)[3]
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket,
                               tmp_path / "cache")
    s3 = make_s3_client(settings)
    heads: list[str] = []

    def remember_head(params: dict[str, Any], **_: Any) -> None:
        heads.append(params["Key"])

    def overwrite_once(**_: Any) -> None:
        if heads[-1] == keys_key and heads.count(keys_key) == 1:
            uploader.put("keys/shared.ekl", second.keys)  # after the check, before the read

    s3.meta.events.register("before-parameter-build.s3.HeadObject", remember_head)
    s3.meta.events.register("after-call.s3.HeadObject", overwrite_once)
    client = create_app(settings, s3_client=s3).test_client()
    row = first.model.scaled_test[0]
    _assert_decrypts(invoke(client, _unnamed(second, uploader, row, keys_uri)), second, row)
    assert heads.count(keys_key) >= 1  # the overwrite happened between the check and the read
    uploader.put("keys/shared.ekl", first.keys)  # back to A: A's version again
    _assert_predicts(client, first, uploader, first.model.scaled_test[1:3], keys_uri)


def test_unnamed_keys_deleted_from_s3_are_not_found_even_while_cached(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    keys_uri = uploader.keys(fhe)
    row = fhe.model.scaled_test[0]
    _assert_predicts(client, fhe, uploader, row[None, :], keys_uri)
    uploader.s3.delete_object(Bucket=uploader.bucket, Key=keys_uri.split("/", 3)[3])
    assert_error(invoke(client, _unnamed(fhe, uploader, row, keys_uri)), 404,
                 "EvaluationKeysNotFound", f"evaluation keys {keys_uri} does not exist")
    uploader.keys(fhe)  # what the client does on EvaluationKeysNotFound
    _assert_predicts(client, fhe, uploader, row[None, :], keys_uri)
    assert s3_requests(s3_server, "GET", keys_uri) == 1  # same bytes, same ETag: no download


def test_unnamed_keys_index_is_shared_by_workers_within_the_memory_bound(
        fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
        tmp_path: Path, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    fhe = keyed["tree"]
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path / "c",
                               key_cache_max_bytes=len(fhe.keys) - 1)
    keys_uri = uploader.keys(fhe)
    rows = fhe.model.scaled_test[:2]
    first, second = (create_app(settings).test_client() for _ in range(2))
    _assert_predicts(first, fhe, uploader, rows, keys_uri)
    _assert_predicts(second, fhe, uploader, rows, keys_uri)
    assert s3_requests(s3_server, "GET", keys_uri) == 1
    cache = metrics(second)["key_cache"]
    assert (cache["downloads"], cache["disk_hits"], cache["memory_bytes"]) == (0, 2, 0)


def test_disk_cache_is_shared_by_a_second_worker_without_s3(
        fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
        tmp_path: Path, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    fhe = keyed["tree"]
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path / "c")
    row = fhe.model.scaled_test[0]
    body = uploader.request(fhe, row[None, :], evaluation_keys_sha256=fhe.keys_sha)
    _assert_decrypts(invoke(create_app(settings).test_client(), body), fhe, row)
    assert (tmp_path / "c" / f"{fhe.keys_sha}.ekl").read_bytes() == fhe.keys
    second = create_app(settings).test_client()
    other = fhe.model.scaled_test[1]
    _assert_decrypts(invoke(second, uploader.request(
        fhe, other[None, :], evaluation_keys_sha256=fhe.keys_sha)), fhe, other)  # keys from disk
    cache = metrics(second)["key_cache"]
    assert (cache["downloads"], cache["disk_hits"]) == (0, 1)


def test_memory_lru_is_bounded(make_client: AppFactory, keyed: dict[str, KeyedClient],
                               uploader: Uploader) -> None:
    fhe = keyed["tree"]
    client = make_client("tree", key_cache_max_bytes=len(fhe.keys) - 1)
    for row in fhe.model.scaled_test[:2]:  # downloaded (too big to keep), then read from disk
        body = uploader.request(fhe, row[None, :], evaluation_keys_sha256=fhe.keys_sha)
        _assert_decrypts(invoke(client, body), fhe, row)
    cache = metrics(client)["key_cache"]
    assert (cache["memory_bytes"], cache["memory_hits"], cache["disk_hits"]) == (0, 0, 1)


# -- every bad input -> exact status, code and message; the app keeps serving ---------------


def _good(fhe: KeyedClient, uploader: Uploader) -> bytes:
    return uploader.request(fhe, fhe.model.scaled_test[:1])


BAD_BODIES: list[tuple[str, Callable[[KeyedClient, Uploader], bytes], int, str, str]] = [
    ("not json", lambda f, u: b"{nope", 400, "BadRequest", "request body is not valid JSON"),
    ("not an object", lambda f, u: b"[]", 400, "BadRequest", "must be a JSON object"),
    ("missing keys", lambda f, u: json.dumps({"encrypted_query_uri": "s3://b/k"}).encode(),
     400, "BadRequest", "missing required field 'evaluation_keys_uri'"),
    ("wrong type", lambda f, u: json.dumps({"evaluation_keys_uri": 3,
                                            "encrypted_query_uri": "s3://b/k"}).encode(),
     400, "BadRequest", "'evaluation_keys_uri' must be a string"),
    ("two query fields", lambda f, u: json.dumps({
        "evaluation_keys_uri": "s3://bucket/k", "encrypted_query_uri": "s3://bucket/q",
        "encrypted_query_uris": ["s3://bucket/q"]}).encode(),
     400, "BadRequest", "give exactly one of"),
    ("outside allow-list", lambda f, u: build_request(
        evaluation_keys_uri=f"s3://{u.bucket}/other/k.ekl",
        encrypted_query_uri="s3://other-bucket/fhe/q.bin"),
     403, "AccessDenied", "may not read s3://other-bucket/fhe/q.bin, s3://"),
    ("missing object", lambda f, u: build_request(
        evaluation_keys_uri=u.keys(f), encrypted_query_uri=f"s3://{u.bucket}/{u.prefix}none"),
     404, "NotFound", "does not exist: upload it first"),
    ("missing keys", lambda f, u: build_request(
        evaluation_keys_uri=f"s3://{u.bucket}/{u.prefix}no-such-keys.ekl",
        encrypted_query_uri=u.put("q/ok", f.encrypt(f.model.scaled_test[0]))),
     404, "EvaluationKeysNotFound", "evaluation keys s3://"),
    ("fingerprint", lambda f, u: u.request(f, f.model.scaled_test[:1],
                                           model_fingerprint="0" * 64),
     422, "ModelMismatch", "does not match the deployed model"),
    ("garbage ciphertext", lambda f, u: build_request(
        evaluation_keys_uri=u.keys(f), encrypted_query_uri=u.put("q/garbage", b"\x00" * 99)),
     422, "ModelMismatch", "ciphertext 0 does not fit this model"),
    ("garbage keys", lambda f, u: build_request(
        evaluation_keys_uri=u.put("k/garbage", b"garbage-keys" * 10),
        encrypted_query_uri=u.put("q/ok", f.encrypt(f.model.scaled_test[0]))),
     422, "ModelMismatch", "are not concrete evaluation keys"),
    ("query sha", lambda f, u: u.request(f, f.model.scaled_test[:1],
                                         encrypted_query_sha256="a" * 64),
     422, "ChecksumMismatch", "the request says " + "a" * 64),
    ("keys sha", lambda f, u: build_request(
        evaluation_keys_uri=u.keys(f), evaluation_keys_sha256="b" * 64,
        encrypted_query_uri=u.put("q/ok", f.encrypt(f.model.scaled_test[0]))),
     422, "ChecksumMismatch", "re-upload the object"),
    ("bad batch framing", lambda f, u: build_request(
        evaluation_keys_uri=u.keys(f), encrypted_batch_uri=u.put("q/b.fheb", b"XXXX\x01")),
     400, "BadRequest", "batch body is shorter than its 9-byte header"),
]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("case", "make_body", "status", "code", "message"), BAD_BODIES,
                         ids=[case[0] for case in BAD_BODIES])
def test_bad_input_gets_exact_error_and_server_keeps_serving(
        case: str, make_body: Callable[[KeyedClient, Uploader], bytes], status: int, code: str,
        message: str, runtime: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    client, fhe = make_client("tree", runtime=runtime), keyed["tree"]
    assert_error(invoke(client, make_body(fhe, uploader)), status, code, message)
    response = invoke(client, _good(fhe, uploader))
    assert response.status_code == 200
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(fhe.model.scaled_test[0]))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_keys_of_another_circuit_are_refused_before_running(
        runtime: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    """Linear keys (no bootstrap keys) on the tree circuit abort concrete's runtime (SIGSEGV)."""
    client, tree, linear = make_client("tree", runtime=runtime), keyed["tree"], keyed["linear"]
    query = uploader.put("q", tree.encrypt(tree.model.scaled_test[0]))
    body = build_request(evaluation_keys_uri=uploader.keys(linear),
                         encrypted_query_uri=query)
    assert_error(invoke(client, body), 422, "ModelMismatch",
                 "the evaluation keys hold 0 bootstrap, 0 keyswitch, 0 packing-keyswitch key(s),"
                 " this model needs 1 bootstrap, 1 keyswitch, 0 packing-keyswitch key(s)")
    assert invoke(client, _good(tree, uploader)).status_code == 200


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ciphertext_of_another_circuit_is_refused(
        runtime: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    client, tree, linear = make_client("linear", runtime=runtime), keyed["tree"], keyed["linear"]
    query = uploader.put("q", tree.encrypt(tree.model.scaled_test[0]))
    body = build_request(evaluation_keys_uri=uploader.keys(linear),
                         encrypted_query_uri=query)
    assert_error(invoke(client, body), 422, "ModelMismatch", "ciphertext 0 does not fit this model")


def test_limits_give_413(make_client: AppFactory, keyed: dict[str, KeyedClient],
                         uploader: Uploader) -> None:
    fhe = keyed["tree"]
    client = make_client("tree", max_request_bytes=2000, max_batch_size=2,
                         max_object_bytes=len(fhe.keys) - 1)
    assert_error(invoke(client, b"{" + b" " * 3000 + b"}"), 413, "PayloadTooLarge",
                 "request body is over 2000 bytes")
    assert_error(invoke(client, uploader.request(fhe, fhe.model.scaled_test[:3], batch=True)),
                 413, "PayloadTooLarge", "names 3 ciphertexts; the limit is 2")
    assert_error(invoke(client, _good(fhe, uploader)), 413, "PayloadTooLarge",
                 f"the server reads at most {len(fhe.keys) - 1}")


def test_unreachable_s3_gives_503(make_client: AppFactory, keyed: dict[str, KeyedClient],
                                  uploader: Uploader) -> None:
    body = _good(keyed["tree"], uploader)
    client = make_client("tree", s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                         s3_connect_timeout=0.5)
    assert_error(invoke(client, body), 503, "StorageUnavailable", "retry later")


def test_unexpected_error_is_500_and_logged(make_client: AppFactory, keyed: dict[str, KeyedClient],
                                            uploader: Uploader, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    client = make_client("tree")
    services = client.application.extensions["fhe"]

    class BrokenS3:
        def head_object(self, **_: Any) -> Any:
            raise KeyError("injected fault")

        get_object = head_object

    services.store._client = BrokenS3()
    assert_error(invoke(client, _good(keyed["tree"], uploader)), 500, "InternalError",
                 "internal error; the server log has the details")
    assert "injected fault" in caplog.text
    assert "Traceback" in caplog.text


def test_routes_and_methods(make_client: AppFactory) -> None:
    client = make_client("linear")
    assert client.get("/ping").status_code == 200
    assert_error(client.get("/nope"), 404, "NotFound", "")
    assert_error(client.get("/invocations"), 405, "MethodNotAllowed", "")
    assert metrics(client)["model_loaded"] is True


def test_ping_is_503_until_the_model_loads(fixture_models: dict[str, FixtureModel],
                                           s3_server: LocalS3Server, serving_bucket: str,
                                           tmp_path: Path) -> None:
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path,
                               model_dir=tmp_path / "empty")
    client = create_app(settings).test_client()
    assert_error(client.get("/ping"), 503, "NotReady", "server.zip not found: set FHE_MODEL_DIR")
    assert_error(invoke(client, b"{}"), 503, "NotReady", "the model failed to load")


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_fingerprint_is_checked_before_any_s3_read(
    batch: bool, fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
    serving_bucket: str, tmp_path: Path, keyed: dict[str, KeyedClient], uploader: Uploader,
) -> None:
    import boto3

    from local_mode.s3_server import LOCAL_REGION

    calls: list[str] = []
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path)
    client = create_app(settings, s3_client=s3).test_client()
    fhe, rows = keyed["tree"], keyed["tree"].model.scaled_test[:2]
    wrong = uploader.request(fhe, rows, batch=batch, model_fingerprint="0" * 64)
    assert_error(invoke(client, wrong), 422, "ModelMismatch", "does not match the deployed model")
    assert calls == []
    right = uploader.request(fhe, rows, batch=batch,
                             model_fingerprint=fhe.model.manifest.client_fingerprint)
    assert invoke(client, right).status_code == 200
    assert "GetObject" in calls  # the control: the same request, rightly fingerprinted, reads S3


def test_ping_is_503_while_the_model_is_loading(
    fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
    tmp_path: Path, keyed: dict[str, KeyedClient], uploader: Uploader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Background load (as under gunicorn): 503 NotReady until loaded, then a good answer."""
    import threading

    from inference.model import FheModel

    release, real_load = threading.Event(), FheModel.load.__func__

    def slow_load(cls: type[FheModel], model_dir: Path, **options: Any) -> FheModel:
        assert release.wait(60)
        return real_load(cls, model_dir, **options)

    monkeypatch.setattr(FheModel, "load", classmethod(slow_load))
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path)
    client = create_app(settings, background_load=True).test_client()
    fhe, row = keyed["tree"], keyed["tree"].model.scaled_test[0]
    body = uploader.request(fhe, row[None, :])
    assert_error(client.get("/ping"), 503, "NotReady", "the model is still loading")
    assert_error(invoke(client, body), 503, "NotReady", "retry after GET /ping answers 200")
    assert metrics(client)["model_loaded"] is False
    release.set()
    deadline = time.monotonic() + 60
    while client.get("/ping").status_code != 200:
        assert time.monotonic() < deadline, "the model never finished loading"
        time.sleep(0.05)
    response = invoke(client, body)
    assert response.status_code == 200, response.data[:300]
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(row))


def test_a_model_dir_that_does_not_match_its_manifest_is_not_served(
    fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
    tmp_path: Path,
) -> None:
    import shutil

    model_dir = tmp_path / "mixed"
    shutil.copytree(fixture_models["linear"].model_dir, model_dir)
    shutil.copy(fixture_models["tree"].model_dir / "server.zip", model_dir / "server.zip")
    settings = server_settings(fixture_models["linear"], s3_server, serving_bucket,
                               tmp_path / "cache", model_dir=model_dir)
    client = create_app(settings).test_client()
    assert_error(client.get("/ping"), 503, "NotReady",
                 "server.zip does not match the sha256 in manifest.json")


# -- issue 10: the allow-list boundary, malformed bodies, the body limit ---------------------


class Boundary:
    """An app allowed ``s3://<bucket>/client`` (no trailing slash, as local_mode/stack.py deploys
    it), good objects under ``client/`` and look-alike objects planted under ``client-evil/``.

    The planted ciphertext encrypts another row than the good one, so a result computed from
    it decrypts to another prediction; ``log`` records every request the app sends to S3.
    """

    def __init__(self, model: FixtureModel, fhe: KeyedClient, s3_server: LocalS3Server,
                 bucket: str, cache_dir: Path) -> None:
        settings = server_settings(model, s3_server, bucket, cache_dir,
                                   allowed_prefixes=(parse_allowed_prefix(f"s3://{bucket}/client"),))
        s3 = make_s3_client(settings)
        self.fhe, self.bucket = fhe, bucket
        self.good_row, self.planted_row = fhe.model.scaled_test[0], fhe.model.scaled_test[5]
        assert not np.allclose(fhe.expected(self.good_row), fhe.expected(self.planted_row))
        self.uris: dict[str, dict[str, str]] = {}
        for folder, row in (("client", self.good_row), ("client-evil", self.planted_row)):
            up = Uploader(s3, bucket, f"{folder}/")
            ciphertext = fhe.encrypt(row)
            self.uris[folder] = {"keys": up.keys(fhe), "query": up.put("q.bin", ciphertext),
                                 "batch": up.put("b.fheb", pack_batch([ciphertext]))}
        self.log = S3RequestLog.attach(s3)
        self.client = create_app(settings, s3_client=s3).test_client()

    def body(self, field: str, folder: str) -> bytes:
        """A request whose ``field`` names the object in ``folder``, the rest the good ones."""
        good, other = self.uris["client"], self.uris[folder]
        keys = other["keys"] if field == "keys" else good["keys"]
        if field == "queries":
            return build_request(evaluation_keys_uri=keys,
                                 encrypted_query_uris=[good["query"], other["query"]])
        if field == "batch":
            return build_request(evaluation_keys_uri=keys, encrypted_batch_uri=other["batch"])
        return build_request(evaluation_keys_uri=keys,
                             encrypted_query_uri=other["query"] if field == "query"
                             else good["query"])


@pytest.fixture
def boundary(fixture_models: dict[str, FixtureModel], keyed: dict[str, KeyedClient],
             s3_server: LocalS3Server, bucket: str, tmp_path: Path) -> Boundary:
    return Boundary(fixture_models["linear"], keyed["linear"], s3_server, bucket, tmp_path)


@pytest.mark.parametrize("field", ["keys", "query", "queries", "batch"])
def test_a_sibling_prefix_is_refused_before_any_s3_read(boundary: Boundary, field: str) -> None:
    """Class 1 of issue 10: 'client' allowed 'client-evil/...' (startswith, no boundary)."""
    response = invoke(boundary.client, boundary.body(field, "client-evil"))
    assert_error(response, 403, "AccessDenied",
                 f"may not read s3://{boundary.bucket}/client-evil/")
    assert "allowed prefixes (s3://" in parse_error_body(response.data)[2]
    assert boundary.log.sent == [], "the server sent S3 requests for a refused request"

    response = invoke(boundary.client, boundary.body(field, "client"))
    assert response.status_code == 200, response.data[:300]
    results = unpack_batch(response.data) if field in ("queries", "batch") else [response.data]
    for result in results:
        np.testing.assert_allclose(boundary.fhe.decrypt(result),
                                   boundary.fhe.expected(boundary.good_row))
    assert {key.split("/")[0] for _, key in boundary.log.reads()} == {"client"}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"evaluation_keys_uri": "s3://b-1/client/k\\ud800.ekl", "encrypted_query_uri":'
     b' "s3://b-1/client/q.bin"}', r"'\ud800' (U+D800)"),
    (b"[" * 10_000 + b"]" * 10_000, "nests JSON too deeply"),
    (b'{"evaluation_keys_uri": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
    (b"\xed\xa0\x80", "it must be UTF-8"),
], ids=["lone-surrogate-uri", "10000-deep", "5000-digit-int", "raw-surrogate-bytes"])
def test_malformed_bodies_are_400_with_the_contract_error(
        boundary: Boundary, body: bytes, message: str) -> None:
    """Class 2 of issue 10: these were 500 InternalError (UnicodeEncodeError, RecursionError)."""
    assert_error(invoke(boundary.client, body), 400, "BadRequest", message)
    assert boundary.log.sent == []
    assert metrics(boundary.client)["counters"].get("errors_500") is None


@contextmanager
def _real_server(client: FlaskClient) -> Iterator[tuple[int, list[dict[str, str | None]]]]:
    """Serve the test client's app with a real HTTP/1.1 server (werkzeug's) on loopback.

    Yields its port and, per request, the framing headers the WSGI app saw.
    """
    from werkzeug.serving import make_server

    app = client.application
    seen: list[dict[str, str | None]] = []
    inner = app.wsgi_app

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append({k: environ.get(k) for k in ("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING")})
        return inner(environ, start_response)

    app.wsgi_app = recording
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, seen
    finally:
        server.shutdown()
        thread.join(timeout=30)


def _post_chunked(port: int, body: bytes, *, pieces: int = 3) -> tuple[int, bytes]:
    """POST ``body`` over a raw socket as ``Transfer-Encoding: chunked`` (no Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        step = max(1, -(-len(body) // pieces))
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        # Done sending (Connection: close): a server that drains the unread rest of a refused
        # body (werkzeug does, with a blocking read) then sees the end instead of waiting.
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    response = http.client.HTTPResponse(_Replayed(reply))  # type: ignore[arg-type]
    response.begin()
    return response.status, response.read()


class _Replayed:
    """A socket stand-in that replays received bytes (for http.client's response parser)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *_args: Any, **_kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self._data)


def test_a_chunked_body_over_the_limit_is_413_not_truncated(make_client: AppFactory,
                                                           keyed: dict[str, KeyedClient],
                                                           uploader: Uploader) -> None:
    """A real chunked request (raw socket, real server, no Content-Length anywhere): over the
    limit is refused by the bounded read of the de-chunked stream, the limit itself is served
    (gunicorn alone, the deployed form, is in test_serve.py)."""
    fhe = keyed["linear"]
    good = _good(fhe, uploader)
    client = make_client("linear", max_request_bytes=len(good) + 10)
    padded = good[:-1] + b" " * 11 + b"}"  # valid JSON one byte over the limit
    with _real_server(client) as (port, seen):
        status, body = _post_chunked(port, padded)
        assert (status, *parse_error_body(body)) == (
            413, 413, "PayloadTooLarge", f"request body is over {len(good) + 10} bytes: send S3"
            " URIs, not data (or raise FHE_MAX_REQUEST_BYTES)")
        status, body = _post_chunked(port, good[:-1] + b" " * 10 + b"}")  # exactly the limit
        assert status == 200, body[:300]
        np.testing.assert_allclose(fhe.decrypt(body), fhe.expected(fhe.model.scaled_test[0]))
    assert seen == [{"CONTENT_LENGTH": None, "HTTP_TRANSFER_ENCODING": "chunked"}] * 2
    assert_error(invoke(client, padded), 413, "PayloadTooLarge", "over")  # and with a length


@pytest.mark.parametrize(("inference_id", "echoed"), [
    ("job-1", True), ("i" * 64, True), ("i" * 65, False), ("\x1b[31mred", False),
    (" lead", False), ("caf\xe9", False), ("", False)])
def test_only_a_sagemaker_shaped_inference_id_becomes_the_request_id(
        make_client: AppFactory, inference_id: str, echoed: bool) -> None:
    """The id reaches logs and a response header: it is SageMaker's shape or replaced."""
    response = make_client("linear").post("/invocations", data=b"{",
                                           headers={"X-Amzn-SageMaker-Inference-Id": inference_id})
    assert response.status_code == 400
    request_id = response.headers["X-Fhe-Request-Id"]
    if echoed:
        assert request_id == inference_id
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id


def test_a_model_dir_without_manifest_is_served_like_the_samples(
    fixture_models: dict[str, FixtureModel], keyed: dict[str, KeyedClient], uploader: Uploader,
    s3_server: LocalS3Server, serving_bucket: str, tmp_path: Path,
) -> None:
    """What FHEModelDev(dir, model).save() alone writes (the AWS sample's training) is served."""
    import shutil

    model_dir = tmp_path / "plain"
    model_dir.mkdir()
    for name in ("server.zip", "client.zip"):
        shutil.copy(fixture_models["tree"].model_dir / name, model_dir / name)
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket,
                               tmp_path / "cache", model_dir=model_dir)
    client = create_app(settings).test_client()
    assert client.get("/ping").status_code == 200
    fhe = keyed["tree"]
    rows = fixture_models["tree"].scaled_test[:1]
    response = invoke(client, uploader.request(fhe, rows))  # exactly the sample's two fields
    assert response.status_code == 200 and response.mimetype == CONTENT_TYPE_RESULT
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(rows[0]), rtol=0,
                               atol=1e-12)
    # Without a manifest the fingerprint is client.zip's own sha256; others are refused.
    fingerprint = sha256_hex((model_dir / "client.zip").read_bytes())
    assert invoke(client, uploader.request(fhe, rows, model_fingerprint=fingerprint)
                  ).status_code == 200
    assert_error(invoke(client, uploader.request(fhe, rows, model_fingerprint="0" * 64)), 422,
                 "ModelMismatch", "does not match the deployed model")


# -- another tenant's keys: what the two-field request cannot tell, and the hash can -----------


def test_another_tenants_valid_keys_decrypt_wrong_in_the_two_field_form_and_are_refused_by_hash(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader,
        tmp_path: Path) -> None:
    """Two tenants of one endpoint (one model, one allow-list). A request in the AWS sample's
    two-field form that names Bob's valid evaluation keys with Alice's ciphertext is served
    (nothing in it can show the mismatch) and decrypts, for Alice, to wrong values. The kit's
    form names the keys' sha256 as well: the same mix-up is refused before any FHE run."""
    alice = keyed["tree"]  # a circuit with bootstraps, which use the evaluation keys
    bob = make_keyed_client(alice.model, tmp_path / "bob-keys")
    bob_keys = uploader.put("clients/bob/keys/bob.ekl", bob.keys)
    rows = alice.model.scaled_test[:6]
    client = make_client("tree")
    wrong = 0
    for row in rows:
        response = invoke(client, _unnamed(alice, uploader, row, bob_keys))
        assert response.status_code == 200, response.data[:300]  # undetectable by the server
        wrong += not np.allclose(alice.decrypt(response.data), alice.expected(row))
    assert wrong > len(rows) // 2, f"only {wrong} of {len(rows)} rows came out wrong"

    query = uploader.put("clients/alice/queries/q.bin", alice.encrypt(rows[0]))
    body = build_request(evaluation_keys_uri=bob_keys, encrypted_query_uri=query,
                         evaluation_keys_sha256=alice.keys_sha)
    fresh = make_client("tree")  # no keys cached yet: the URI is read and its hash checked
    assert_error(invoke(fresh, body), 422, "ChecksumMismatch",
                 f"evaluation keys {bob_keys} has sha256 {bob.keys_sha}, the request says"
                 f" {alice.keys_sha}")
    assert metrics(fresh)["key_cache"]["deserializations"] == 0  # Bob's keys were never used
