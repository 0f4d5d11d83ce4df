"""The client against the real local stack: start_training.py --local, deploy_endpoint.py --local.

FHE results are checked against the clear quantised model from the training job's
output.tar.gz (``reference_model.json``, ``fhe="disable"``).
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
from collections.abc import Iterator

import boto3
import numpy as np
import psutil
import pytest

from client import EncryptedPredictor
from client.errors import InferenceFailedError, InferenceTimeoutError
from common.contract import parse_s3_uri
from local_mode.demo import load_case, main
from local_mode.s3_server import LOCAL_REGION
from local_mode.stack import LocalStack, local_stack
from tests.fixtures.serving import wait_for_object

pytestmark = pytest.mark.slow
LINEAR = {"model": "LogisticRegression"}
TREE = {"model": "DecisionTreeClassifier", "max_depth": 2, "n_bits": 3}


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[np.ndarray, ...]:
    """``x_train, x_held, y_train, y_held``."""
    return load_case("breast-cancer")[:4]


@pytest.fixture(scope="module")
def linear_stack(breast_cancer, tmp_path_factory) -> Iterator[LocalStack]:
    x_train, _, y_train, _ = breast_cancer
    with local_stack(
        x_train, y_train, hyperparameters=LINEAR, work_dir=tmp_path_factory.mktemp("linear")
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def tree_stack(breast_cancer, tmp_path_factory) -> Iterator[LocalStack]:
    x_train, _, y_train, _ = breast_cancer
    with local_stack(
        x_train, y_train, hyperparameters=TREE, work_dir=tmp_path_factory.mktemp("tree")
    ) as stack:
        yield stack


def _keys(stack: LocalStack, prefix: str) -> list[str]:
    listing = stack.s3_client().list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _assert_matches_reference(
    stack: LocalStack, x: np.ndarray, proba: np.ndarray, labels: np.ndarray, scaler
) -> None:
    reference, metrics = stack.reference()
    scaled = scaler.transform(x)
    np.testing.assert_array_equal(labels, reference.predict(scaled, fhe="disable"))
    np.testing.assert_allclose(
        proba, reference.predict_proba(scaled, fhe="disable"), rtol=0, atol=1e-12
    )
    assert metrics["n_train"] > 0


def test_demo_main_agrees_with_the_clear_model(tmp_path, capsys) -> None:
    assert main(["--n-patients", "4", "--batch-size", "3", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "agreement FHE vs clear quantised      : 100.0%" in out
    assert "OK: encrypted predictions match the clear quantised model on every row" in out
    for stage in ("keygen", "encrypt", "upload", "wait", "download", "decrypt"):
        assert f"{stage} " in out


def test_linear_predictions_equal_the_clear_quantised_model(linear_stack, breast_cancer) -> None:
    x = breast_cancer[1][:7]
    with linear_stack.predictor(batch_size=3, progress=False) as model:
        proba = model.predict_proba(x)
        labels = model.predict(x)
        single = model.predict(x[0])
        scaler = model.model.manifest.scaler
        assert model.last_timings.requests == 1 and model.last_timings.rows == 1
        assert model.timings.rows == 15
    _assert_matches_reference(linear_stack, x, proba, labels, scaler)
    assert single.tolist() == labels[:1].tolist()
    assert _keys(linear_stack, "client/queries/") == _keys(linear_stack, "client/requests/") == []
    assert _keys(linear_stack, "async-out/") == []


def test_keep_objects_leaves_the_request_objects(linear_stack, breast_cancer) -> None:
    before = len(_keys(linear_stack, "async-out/"))
    with linear_stack.predictor(keep_objects=True, batch_size=2, progress=False) as model:
        model.predict(breast_cancer[1][:3])
    assert len(_keys(linear_stack, "async-out/")) == before + 2
    assert len(_keys(linear_stack, "client/queries/")) >= 2


def test_server_failure_carries_the_server_message(
    linear_stack, fixture_models, breast_cancer, tmp_path
) -> None:
    """A client holding another model's client.zip: the container refuses, the client says why."""
    with (
        EncryptedPredictor(
            linear_stack.endpoint_name,
            fixture_models["tree"].model_dir,
            linear_stack.s3_prefix,
            session=linear_stack.session(),
            s3_endpoint_url=linear_stack.s3_endpoint_url,
            runtime_endpoint_url=linear_stack.runtime_url,
            key_dir=tmp_path,
            progress=False,
        ) as model,
        pytest.raises(InferenceFailedError, match=r"\[422 ModelMismatch\]") as info,
    ):
        model.predict(breast_cancer[1][:2])
    assert info.value.status == 422
    assert "fingerprint" in info.value.message
    assert parse_s3_uri(info.value.location).key.startswith("async-fail/")


def test_hung_server_ends_in_a_timeout(linear_stack, breast_cancer) -> None:
    """The container stops answering (SIGSTOP): predict gives up after its timeout."""
    serving = psutil.Process(linear_stack.endpoint_pid).children(recursive=True)
    assert serving, "deploy_endpoint.py --local should run the serve stack as child processes"
    with linear_stack.predictor(timeout=1.5, progress=False) as model:
        model.ensure_keys()
        for proc in serving:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(
                InferenceTimeoutError, match="no result at s3://fhe-demo/async-out/"
            ):
                model.predict(breast_cancer[1][:1])
        finally:
            for proc in serving:
                os.kill(proc.pid, signal.SIGCONT)


def test_tree_keys_are_reused_and_predictions_match(tree_stack, breast_cancer) -> None:
    x = breast_cancer[1][:4]
    with tree_stack.predictor(batch_size=4, progress=False) as first:
        proba = first.predict_proba(x)
        labels = first.predict(x)
        scaler = first.model.manifest.scaler
        assert (first.timings.keygens, first.timings.evaluation_key_uploads) == (1, 1)
        keys = first.ensure_keys()
    _assert_matches_reference(tree_stack, x, proba, labels, scaler)
    assert keys.evaluation_keys_bytes > 1_000_000
    with tree_stack.predictor(progress=False) as second:
        again = second.predict(x)
        assert (second.timings.keygens, second.timings.evaluation_key_uploads) == (0, 0)
        assert second.storage.bytes_downloaded > 0
    np.testing.assert_array_equal(again, labels)
    assert _keys(tree_stack, "client/keys/") == [f"client/keys/{keys.evaluation_keys_sha256}.ekl"]


def test_keys_lost_from_s3_are_uploaded_again(tree_stack, breast_cancer, tmp_path) -> None:
    """The server answers 404 EvaluationKeysNotFound; the client re-uploads once and succeeds."""
    x = breast_cancer[1][:8]
    with tree_stack.predictor(key_dir=tmp_path / "fresh-keys", progress=False) as model:
        uri = model.upload_evaluation_keys()  # a fresh key set the server has never seen
        tree_stack.s3_client().delete_object(Bucket=uri.bucket, Key=uri.key)
        proba = model.predict_proba(x)
        assert model.timings.evaluation_key_uploads == 2
        scaler = model.model.manifest.scaler
    reference, _ = tree_stack.reference()
    # The oracle can tell scaled rows from unscaled ones (a retry that forgot to scale fails).
    assert not np.array_equal(reference.predict_proba(x, fhe="disable"),
                              reference.predict_proba(scaler.transform(x), fhe="disable"))
    _assert_matches_reference(tree_stack, x, proba, proba.argmax(axis=1), scaler)
    assert f"client/keys/{uri.key.rsplit('/', 1)[-1]}" in _keys(tree_stack, "client/keys/")


def test_cli_predict_from_csv_through_env_endpoints(
    linear_stack, breast_cancer, tmp_path, monkeypatch, capsys
) -> None:
    from client.cli import main as cli_main

    x = breast_cancer[1][:3]
    rows = tmp_path / "patients.csv"
    rows.write_text(
        ",".join(f"f{i}" for i in range(30))
        + ",label\n"
        + "\n".join(",".join(map(str, [*r, 0])) for r in x)
        + "\n"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", linear_stack.s3_endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", linear_stack.runtime_url)
    monkeypatch.setenv("FHE_CLIENT_KEY_DIR", str(tmp_path / "keys"))
    code = cli_main(
        [
            "predict",
            "--endpoint-name",
            linear_stack.endpoint_name,
            "--model",
            linear_stack.model_data,
            "--s3-prefix",
            linear_stack.s3_prefix,
            "--input",
            str(rows),
            "--drop-column",
            "label",
            "--output",
            str(tmp_path / "labels.npy"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    with linear_stack.predictor(progress=False) as model:
        scaler = model.model.manifest.scaler
    reference, _ = linear_stack.reference()
    expected = reference.predict(scaler.transform(x), fhe="disable")
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)
    assert '"rows": 3' in capsys.readouterr().out
    assert (tmp_path / "keys").is_dir()


# -- a circuit that is not exact: accumulator rounding and a raised p_error ---------------------
ROUNDED_NN = {"model": "NeuralNetClassifier", "scaler": "minmax", "max_epochs": 3,
              "rounding_bits": 5, "rounding_method": "approximate", "p_error": 0.1}


@pytest.fixture(scope="module")
def rounded_stack(breast_cancer, tmp_path_factory) -> Iterator[LocalStack]:
    x_train, _, y_train, _ = breast_cancer
    with local_stack(x_train, y_train, hyperparameters=ROUNDED_NN,
                     work_dir=tmp_path_factory.mktemp("rounded")) as stack:
        yield stack


def _two_field_predict(stack: LocalStack, rows: np.ndarray, work) -> np.ndarray:
    """The AWS sample's client: plain concrete-ml, a request of exactly two S3 URIs."""
    from concrete.ml.deployment import FHEModelClient

    s3 = stack.s3_client()
    model = parse_s3_uri(stack.model_data)
    s3.download_file(model.bucket, model.key, str(work / "model.tar.gz"))
    with tarfile.open(work / "model.tar.gz", mode="r:gz") as tar:
        tar.extract("client.zip", work, filter="data")
    client = FHEModelClient(str(work), key_dir=str(work / "keys"))
    client.generate_private_and_evaluation_keys()
    base = f"client/two-field/{work.name}"
    s3.put_object(Bucket=stack.bucket, Key=f"{base}/evaluation_keys",
                  Body=client.get_serialized_evaluation_keys())
    runtime = boto3.client("sagemaker-runtime", endpoint_url=stack.runtime_url,
                           region_name=LOCAL_REGION)
    out = []
    for i, row in enumerate(rows):
        s3.put_object(Bucket=stack.bucket, Key=f"{base}/{i}/encrypted_query",
                      Body=client.quantize_encrypt_serialize(row.reshape(1, -1)))
        query = {"evaluation_keys_uri": f"s3://{stack.bucket}/{base}/evaluation_keys",
                 "encrypted_query_uri": f"s3://{stack.bucket}/{base}/{i}/encrypted_query"}
        s3.put_object(Bucket=stack.bucket, Key=f"{base}/{i}/query", Body=json.dumps(query))
        response = runtime.invoke_endpoint_async(
            EndpointName=stack.endpoint_name, ContentType="application/json",
            InputLocation=f"s3://{stack.bucket}/{base}/{i}/query")
        result = wait_for_object(s3, response["OutputLocation"], timeout=300)
        out.append(client.deserialize_decrypt_dequantize(result)[0])
    return np.asarray(out)


def test_rounded_network_meets_its_statistical_oracle_for_both_clients(
        rounded_stack, breast_cancer, tmp_path) -> None:
    """Rounded accumulators and p_error 0.1 go through training, the serve stack, the kit's
    client and the sample's two-field client unchanged; neither is exact, so both meet the
    statistical oracle (bench/check.py) with the agreement measured at training time."""
    from bench.check import check_circuit_agreement

    x = breast_cancer[1][:16]
    with rounded_stack.predictor(batch_size=8, progress=False) as model:
        proba = model.predict_proba(x)
        scaler = model.model.manifest.scaler
        circuit = model.circuit
    assert circuit["p_error"] == 0.1 and circuit["rounding_bits"] == 5
    assert circuit["exact"] is False and circuit["agreement"]["simulated"]["rows"] > 0
    (tmp_path / "two-field").mkdir()
    plain = _two_field_predict(rounded_stack, scaler.transform(x[:4]), tmp_path / "two-field")
    reference, metrics = rounded_stack.reference()
    assert metrics["circuit"] == circuit
    fhe = np.concatenate([proba, plain])
    clear = reference.predict_proba(scaler.transform(np.concatenate([x, x[:4]])), fhe="disable")
    check = check_circuit_agreement(fhe, clear, what="rounded network", circuit=circuit)
    assert check["oracle"] == "statistical" and check["rows"] == 20
