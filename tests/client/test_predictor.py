"""EncryptedPredictor without a model server: input checks, keys, requests, failures.

S3 is a real moto server over HTTP; sagemaker-runtime is moto's (the AWS control-plane mock),
which writes a queued result to an output or failure object like SageMaker does.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from client import EncryptedPredictor, RetryPolicy
from client.errors import (
    EncryptedInferenceError,
    InferenceFailedError,
    InvalidInputError,
    UnsupportedOperationError,
)
from common.contract import error_body, parse_request, parse_s3_uri, sha256_hex, unpack_batch


def _objects(s3_client, bucket: str, prefix: str = "") -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def make_predictor(s3_server, bucket, client_dirs):
    """Build predictors on the moto server (S3 and sagemaker-runtime)."""
    made: list[EncryptedPredictor] = []

    def make(model_dir: Path, **options: object) -> EncryptedPredictor:
        settings = {
            "key_dir": client_dirs["key_dir"],
            "cache_dir": client_dirs["cache_dir"],
            "s3_endpoint_url": s3_server.endpoint_url,
            "runtime_endpoint_url": s3_server.endpoint_url,
            "region_name": "us-east-1",
            "progress": False,
            # moto's runtime answers an InputLocation it saw with the same result objects, so a
            # retry could only fail again (tests/client/test_retry*.py cover retries).
            "retry": RetryPolicy(max_attempts=1),
            **options,
        }
        predictor = EncryptedPredictor("fhe-endpoint", model_dir, f"s3://{bucket}/fhe", **settings)
        made.append(predictor)
        return predictor

    yield make
    for predictor in made:
        predictor.close()


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 3)), "X has 3 features per row but the model expects 30"),
        (np.zeros((0, 30)), "X has no rows"),
        (
            np.zeros((2, 2, 30)),
            r"X must be 2-D \(rows x 30 features\) or one 1-D row; got shape \(2, 2, 30\)",
        ),
        ([["a"] * 30], "X must be numeric"),
        (
            np.where(np.eye(3, 30) > 0, np.nan, 0.0),
            r"NaN or infinite values in 3 row\(s\) \(0, 1, 2\)",
        ),
        (np.full((1, 30), np.inf), r"NaN or infinite values in 1 row\(s\) \(0\)"),
    ],
)
def test_bad_input_is_rejected_before_any_upload(
    make_predictor, fixture_models, s3_client, bucket, x, message
) -> None:
    predictor = make_predictor(fixture_models["linear"].model_dir)
    with pytest.raises(InvalidInputError, match=message):
        predictor.predict(x)
    assert _objects(s3_client, bucket) == []


def test_request_follows_the_contract_and_failure_carries_the_server_message(
    make_predictor, fixture_models, moto_async_results, s3_client, bucket
) -> None:
    linear = fixture_models["linear"]
    predictor = make_predictor(linear.model_dir, batch_size=4)
    moto_async_results(
        [
            {
                "is_failure": True,
                "data": error_body(422, "ModelError", "circuit rejected the query").decode(),
            }
        ]
    )
    with pytest.raises(InferenceFailedError, match=r"\[422 ModelError\].*circuit rejected") as info:
        predictor.predict(linear.raw_test[:3])
    assert info.value.message == "circuit rejected the query"
    assert isinstance(info.value, EncryptedInferenceError)

    keys = predictor.ensure_keys()
    [request_key] = _objects(s3_client, bucket, "fhe/requests/")
    request = parse_request(s3_client.get_object(Bucket=bucket, Key=request_key)["Body"].read())
    assert request.model_fingerprint == linear.manifest.client_fingerprint
    assert request.evaluation_keys_sha256 == keys.evaluation_keys_sha256
    assert (
        str(request.evaluation_keys_uri)
        == f"s3://{bucket}/fhe/keys/{keys.evaluation_keys_sha256}.ekl"
    )
    assert request.packed and request.batch
    [query] = request.query_uris
    body = s3_client.get_object(Bucket=bucket, Key=query.key)["Body"].read()
    assert request.query_sha256 == (sha256_hex(body),)
    assert len(unpack_batch(body)) == 3
    for key in _objects(s3_client, bucket, "fhe/"):
        assert s3_client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_rows_are_split_into_batches(
    make_predictor, fixture_models, moto_async_results, s3_client, bucket
) -> None:
    predictor = make_predictor(fixture_models["linear"].model_dir, batch_size=2)
    moto_async_results([{"is_failure": True, "data": error_body(500, "E", "x").decode()}] * 3)
    with pytest.raises(InferenceFailedError):
        predictor.predict(fixture_models["linear"].raw_test[:5])
    sizes = sorted(
        len(unpack_batch(s3_client.get_object(Bucket=bucket, Key=k)["Body"].read()))
        for k in _objects(s3_client, bucket, "fhe/queries/")
    )
    assert sizes == [1, 2, 2]
    assert predictor.timings.requests == 3


def test_garbage_output_is_a_bad_response(
    make_predictor, fixture_models, moto_async_results
) -> None:
    predictor = make_predictor(fixture_models["linear"].model_dir)
    moto_async_results([{"data": json.dumps({"not": "a batch"})}])
    with pytest.raises(InferenceFailedError, match=r"BadResponse.*malformed batch result"):
        predictor.predict(fixture_models["linear"].raw_test[:1])


def test_keys_are_generated_once_and_uploaded_once(
    make_predictor, fixture_models, s3_client, bucket, client_dirs
) -> None:
    tree = fixture_models["tree"]
    first = make_predictor(tree.model_dir)
    keys = first.ensure_keys()
    uri = first.upload_evaluation_keys()
    assert keys.generated
    assert (first.timings.keygens, first.timings.evaluation_key_uploads) == (1, 1)
    assert first.upload_evaluation_keys() == uri
    assert first.timings.evaluation_key_uploads == 1

    second = make_predictor(tree.model_dir)
    again = second.ensure_keys()
    assert second.upload_evaluation_keys() == uri
    assert not again.generated
    assert again.evaluation_keys_sha256 == keys.evaluation_keys_sha256
    assert (second.timings.keygens, second.timings.evaluation_key_uploads) == (0, 0)
    assert _objects(s3_client, bucket, "fhe/keys/") == [
        f"fhe/keys/{keys.evaluation_keys_sha256}.ekl"
    ]
    head = s3_client.head_object(Bucket=bucket, Key=uri.key)
    assert head["ContentLength"] == keys.evaluation_keys_bytes
    assert head["ServerSideEncryption"] == "AES256"
    assert second.key_store.uploads(second.fingerprint) == [str(uri)]

    directory = client_dirs["key_dir"] / tree.manifest.client_fingerprint
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_other_key_dir_means_other_keys(make_predictor, fixture_models, tmp_path) -> None:
    linear = fixture_models["linear"]
    one = make_predictor(linear.model_dir).ensure_keys()
    two = make_predictor(linear.model_dir, key_dir=tmp_path / "elsewhere").ensure_keys()
    assert two.generated
    assert two.directory != one.directory
    assert (two.directory / "keyset.bin").read_bytes() != (
        one.directory / "keyset.bin"
    ).read_bytes()


def test_damaged_key_set_is_a_clear_error(make_predictor, fixture_models) -> None:
    from client.errors import KeyStoreError

    predictor = make_predictor(fixture_models["linear"].model_dir)
    keys = predictor.ensure_keys()
    keys.evaluation_keys_path.write_bytes(b"damaged")
    with pytest.raises(KeyStoreError, match="delete that directory to generate new keys"):
        make_predictor(fixture_models["linear"].model_dir).ensure_keys()


def test_repr_close_and_context_manager(make_predictor, fixture_models, bucket) -> None:
    predictor = make_predictor(fixture_models["linear"].model_dir, batch_size=8, timeout=5)
    text = repr(predictor)
    assert text.startswith("EncryptedPredictor(endpoint_name='fhe-endpoint'")
    assert "model_class='LogisticRegression'" in text
    assert f"s3_prefix='s3://{bucket}/fhe'" in text
    assert "batch_size=8, timeout=5.0" in text
    with predictor as same:
        assert same is predictor
    assert repr(predictor).endswith(", closed)")
    with pytest.raises(EncryptedInferenceError, match="closed"):
        predictor.predict(fixture_models["linear"].raw_test[:1])


def test_predict_proba_on_a_regressor_is_refused(make_predictor, fixture_models, tmp_path) -> None:
    model_dir = tmp_path / "regressor"
    shutil.copytree(fixture_models["linear"].model_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["task"] = "regression"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedOperationError, match="is a regressor: use predict"):
        make_predictor(model_dir).predict_proba(fixture_models["linear"].raw_test[:1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_options_are_rejected(make_predictor, fixture_models, options, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_predictor(fixture_models["linear"].model_dir, **options)


def test_bad_prefix_is_rejected(fixture_models) -> None:
    with pytest.raises(InvalidInputError, match="s3_prefix"):
        EncryptedPredictor(
            "e", fixture_models["linear"].model_dir, "bucket/prefix", region_name="us-east-1"
        )


def test_retries_reuse_the_uploaded_request_and_never_hang_on_a_reused_failure_location(
    make_predictor, fixture_models, moto_async_results, s3_client, bucket, caplog
) -> None:
    """moto reports every invocation of one InputLocation to the same failure object: the
    client retries from the same objects, keeps that object (it is the live report) and gives
    up after ``max_attempts``, well inside the timeout."""
    predictor = make_predictor(fixture_models["linear"].model_dir, timeout=60,
                               retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
    moto_async_results([{"is_failure": True,
                         "data": error_body(503, "NotReady", "loading").decode()}])
    with pytest.raises(InferenceFailedError, match=r"\[503 NotReady\]") as info:
        predictor.predict(fixture_models["linear"].raw_test[:2])
    assert "gave up after 3 attempt(s)" in "".join(info.value.__notes__)
    assert predictor.timings.retries == 2 and predictor.timings.requests == 1
    assert len([r for r in caplog.records if r.name == "client.retry"]) == 2
    assert len(_objects(s3_client, bucket, "fhe/queries/")) == 1
    assert len(_objects(s3_client, bucket, "fhe/requests/")) == 1
    failure = parse_s3_uri(info.value.location)
    assert s3_client.head_object(Bucket=failure.bucket, Key=failure.key)
