"""The Flask app in-process (Flask test client) against the real moto S3 server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from inference.contract import (
    CONTENT_TYPE_BATCH,
    CONTENT_TYPE_RESULT,
    build_request,
    pack_batch,
    parse_error_body,
    sha256_hex,
    unpack_batch,
)
from inference.local.s3_server import LocalS3Server, free_port
from inference.predictor import create_app
from tests.fixtures.models import FixtureModel
from tests.inference.conftest import KeyedClient, Uploader, server_settings

AppFactory = Callable[..., FlaskClient]


@pytest.fixture
def make_client(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
                serving_bucket: str, tmp_path: Path) -> AppFactory:
    """Build a test client of an app serving fixture model ``kind``, with setting overrides."""

    def make(kind: str = "tree", **overrides: Any) -> FlaskClient:
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


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_single_query_decrypts_to_clear_quantised_prediction(
        kind: str, make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader
) -> None:
    client, fhe = make_client(kind), keyed[kind]
    row = fhe.model.scaled_test[0]
    response = invoke(client, uploader.request(fhe, row[None, :],
                                               model_fingerprint=fhe.model.manifest.client_fingerprint))
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == CONTENT_TYPE_RESULT
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(row))


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_batch_of_uris_returns_one_result_per_row_in_order(
        kind: str, make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader
) -> None:
    client, fhe = make_client(kind), keyed[kind]
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
    for row in fhe.model.scaled_test[:2]:
        body = uploader.request(fhe, row[None, :], evaluation_keys_sha256=fhe.keys_sha)
        assert invoke(client, body).status_code == 200
    cache = metrics(client)["key_cache"]
    assert (cache["downloads"], cache["deserializations"], cache["memory_hits"]) == (1, 1, 1)


def test_unnamed_keys_are_downloaded_each_time_but_deserialised_once(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    for row in fhe.model.scaled_test[:2]:
        assert invoke(client, uploader.request(fhe, row[None, :])).status_code == 200
    cache = metrics(client)["key_cache"]
    assert (cache["downloads"], cache["deserializations"], cache["memory_hits"]) == (2, 1, 1)


def test_disk_cache_is_shared_by_a_second_worker_without_s3(
        fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server, serving_bucket: str,
        tmp_path: Path, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    fhe = keyed["tree"]
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, tmp_path / "c")
    body = uploader.request(fhe, fhe.model.scaled_test[:1], evaluation_keys_sha256=fhe.keys_sha)
    assert invoke(create_app(settings).test_client(), body).status_code == 200
    assert (tmp_path / "c" / f"{fhe.keys_sha}.ekl").read_bytes() == fhe.keys
    second = create_app(settings).test_client()
    assert invoke(second, body).status_code == 200
    cache = metrics(second)["key_cache"]
    assert (cache["downloads"], cache["disk_hits"]) == (0, 1)


def test_memory_lru_is_bounded(make_client: AppFactory, keyed: dict[str, KeyedClient],
                               uploader: Uploader) -> None:
    fhe = keyed["tree"]
    client = make_client("tree", key_cache_max_bytes=len(fhe.keys) - 1)
    for row in fhe.model.scaled_test[:2]:
        body = uploader.request(fhe, row[None, :], evaluation_keys_sha256=fhe.keys_sha)
        assert invoke(client, body).status_code == 200
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


@pytest.mark.parametrize(("case", "make_body", "status", "code", "message"), BAD_BODIES,
                         ids=[case[0] for case in BAD_BODIES])
def test_bad_input_gets_exact_error_and_server_keeps_serving(
        case: str, make_body: Callable[[KeyedClient, Uploader], bytes], status: int, code: str,
        message: str, make_client: AppFactory, keyed: dict[str, KeyedClient],
        uploader: Uploader) -> None:
    client, fhe = make_client("tree"), keyed["tree"]
    assert_error(invoke(client, make_body(fhe, uploader)), status, code, message)
    response = invoke(client, _good(fhe, uploader))
    assert response.status_code == 200
    np.testing.assert_allclose(fhe.decrypt(response.data), fhe.expected(fhe.model.scaled_test[0]))


def test_keys_of_another_circuit_are_refused_before_running(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    """Linear keys (no bootstrap keys) on the tree circuit abort concrete's runtime (SIGSEGV)."""
    client, tree, linear = make_client("tree"), keyed["tree"], keyed["linear"]
    query = uploader.put("q", tree.encrypt(tree.model.scaled_test[0]))
    body = build_request(evaluation_keys_uri=uploader.keys(linear),
                         encrypted_query_uri=query)
    assert_error(invoke(client, body), 422, "ModelMismatch",
                 "the evaluation keys hold 0 bootstrap, 0 keyswitch, 0 packing-keyswitch key(s),"
                 " this model needs 1 bootstrap, 1 keyswitch, 0 packing-keyswitch key(s)")
    assert invoke(client, _good(tree, uploader)).status_code == 200


def test_ciphertext_of_another_circuit_is_refused(
        make_client: AppFactory, keyed: dict[str, KeyedClient], uploader: Uploader) -> None:
    client, tree, linear = make_client("linear"), keyed["tree"], keyed["linear"]
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
        def get_object(self, **_: Any) -> Any:
            raise KeyError("injected fault")

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
