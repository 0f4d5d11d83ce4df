"""The AWS sample's flow, unchanged in spirit, on the local stack.

setup step (``prepare_data.py``: MNIST-shaped .npy files, uploaded with SSE) -> a training job
with no hyperparameters (``start_training.py --local``) -> the reference network ->
``deploy_endpoint.py --local`` -> the sample's client: plain concrete-ml ``FHEModelClient`` and
boto3, a request with exactly ``evaluation_keys_uri`` and ``encrypted_query_uri``,
``deserialize_decrypt_dequantize`` on the raw result. Nothing of the kit's client is imported.
The decrypted scores must equal the clear quantised model's (``reference_model.json``).

MNIST cannot be downloaded here, so the data is prepare_data.py's stand-in (scikit-learn's
digits upscaled to 28x28): the same 784 inputs, so the same 784-392-10 network. All 1797 stand-in
images are used: training takes seconds, and the compile calibrates on them; a few hundred rows
calibrate wider accumulators (13 bits), whose keys are ~350 MB and take minutes to generate,
against ~130 MB and seconds here. One image still costs a minute or more on 2 cores: one query.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from common.s3_location import parse_s3_uri
from local_mode.processes import wait_for_ready_file
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.serving import wait_for_object

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "MNIST"  # the sample's MNIST_PREFIX
ENDPOINT = "concrete-fhe-mnist"
RESULT_TIMEOUT = 1500.0


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1800, check=False).returncode
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def sample_stack(s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, Any]]:
    """prepare_data.py -> start_training.py --local (no hyperparameters) -> deploy --local."""
    work = tmp_path_factory.mktemp("sample-flow")
    env = {**os.environ, **s3_server.env()}
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    bucket = f"sample-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    _run(["prepare_data.py", "--source", "digits", "--out-dir", str(work / "mnist"),
          "--upload", f"s3://{bucket}/{PREFIX}"], env, work / "prepare.log")
    _run(["start_training.py", "--local", "--train", f"s3://{bucket}/{PREFIX}/",
          "--output-path", f"s3://{bucket}/models/{PREFIX}", "--job-name", f"{PREFIX}-job",
          "--result-file", str(work / "training.json")], env, work / "training.log")
    result = json.loads((work / "training.json").read_text())
    ready = work / "ready.json"
    log = work / "endpoint.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "deploy_endpoint.py", "--local", "--endpoint-name", ENDPOINT,
             "--model-data", result["model_data"], "--timeout", str(int(RESULT_TIMEOUT)),
             "--output-path", f"s3://{bucket}/async/output",
             "--failure-path", f"s3://{bucket}/async/failures", "--ready-file", str(ready)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        info = wait_for_ready_file(ready, timeout=600, process=process, log=log)
        yield {"s3": s3, "bucket": bucket, "work": work, "result": result,
               "runtime_url": info["runtime_url"]}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def _clear_reference(s3: Any, output_data: str, work: Path) -> Any:
    """The clear quantised model of the training job (reference_model.json in output.tar.gz)."""
    from concrete.ml.common.serialization.loaders import loads

    output = parse_s3_uri(output_data)
    s3.download_file(output.bucket, output.key, str(work / "output.tar.gz"))
    with tarfile.open(work / "output.tar.gz") as tar:
        member = tar.extractfile("reference_model.json")
        assert member is not None
        return loads(member.read().decode())


def _sample_client_predict(s3: Any, runtime: Any, bucket: str, model_data: str, row: np.ndarray,
                           work: Path) -> np.ndarray:
    """What the sample's run_inference.py does, with boto3 in place of the SageMaker SDK."""
    from concrete.ml.deployment import FHEModelClient

    config_dir = work / "client-config"
    config_dir.mkdir()
    model = parse_s3_uri(model_data)
    s3.download_file(model.bucket, model.key, str(config_dir / "model.tar.gz"))
    with tarfile.open(config_dir / "model.tar.gz", mode="r:gz") as tar:
        tar.extract("client.zip", config_dir, filter="data")
    concrete_client = FHEModelClient(str(config_dir), key_dir=str(work / "client-keys"))
    concrete_client.generate_private_and_evaluation_keys()
    directory = f"{PREFIX}/{time.strftime('%Y-%m-%d-%H-%M-%S')}"
    s3.put_object(Bucket=bucket, Key=f"{directory}/evaluation_keys",
                  Body=concrete_client.get_serialized_evaluation_keys())
    s3.put_object(Bucket=bucket, Key=f"{directory}/00000000/encrypted_query",
                  Body=concrete_client.quantize_encrypt_serialize(row))
    query = {"evaluation_keys_uri": f"s3://{bucket}/{directory}/evaluation_keys",
             "encrypted_query_uri": f"s3://{bucket}/{directory}/00000000/encrypted_query"}
    s3.put_object(Bucket=bucket, Key=f"{directory}/00000000/query", Body=json.dumps(query))
    response = runtime.invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=f"s3://{bucket}/{directory}/00000000/query",
        ContentType="application/json")
    encrypted_result = wait_for_object(s3, response["OutputLocation"], timeout=RESULT_TIMEOUT)
    return concrete_client.deserialize_decrypt_dequantize(encrypted_result)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_samples_client_gets_the_clear_quantised_prediction(sample_stack: dict[str, Any]
                                                                ) -> None:
    s3, bucket, work = sample_stack["s3"], sample_stack["bucket"], sample_stack["work"]
    result = sample_stack["result"]
    reference = _clear_reference(s3, result["output_data"], work)
    # The zero-configuration job trained the sample's network on the 784-feature rows.
    assert type(reference).__name__ == "NeuralNetClassifier"
    assert (reference.module__n_layers, reference.module__n_w_bits, reference.module__n_a_bits,
            reference.module__n_hidden_neurons_multiplier, reference.max_epochs
            ) == (2, 4, 4, 0.5, 7)
    assert reference.module__activation_function.__name__ == "ReLU"
    x_test = np.load(work / "mnist" / "testing_data" / "mnist_testing_features.npy")
    assert x_test.shape[1] == 784
    row = x_test[:1]
    runtime = boto3.client("sagemaker-runtime", endpoint_url=sample_stack["runtime_url"],
                           region_name=LOCAL_REGION)
    decrypted = _sample_client_predict(s3, runtime, bucket, result["model_data"], row, work)
    np.testing.assert_allclose(decrypted, reference.predict_proba(row, fhe="disable"),
                               rtol=0, atol=1e-9)
    failures = s3.list_objects_v2(Bucket=bucket, Prefix="async/failures/").get("KeyCount")
    assert failures == 0
