"""The two execution roles allow what SageMaker and our containers really do as them, and no more.

An execution role's S3 calls are made by two parties: our code in the container, and SageMaker
itself on the role's behalf (it downloads the training channel and the model, uploads the
training artefacts and the async results). Our code's calls are recorded from the code itself.
SageMaker's are made here, for real against moto, by the code that stands for SageMaker in local
mode (``local_mode.training_job``'s File-mode staging and tarball upload, ``LocalAsyncRuntime``
for the async front end) or by the toolkit call the training image runs, each driven by what our
scripts really asked SageMaker for; every such call is marked ``SageMaker, as the role``.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws

from common.contract import parse_error_body
from common.s3_location import parse_s3_prefix, parse_s3_uri
from tests.iam.evaluator import Decision, Request, evaluate
from tests.iam.recorder import record_calls
from tests.iam.test_least_privilege import (
    BUCKET,
    CL,
    DP,
    REGION,
    ST,
    _assert_all_allowed,
    _deploy_config,
    _model_tar,
    _moved,
    _policy,
)

TLS = {"aws:securetransport": True}
TRAIN_CSV = b"a,b,label\n1,2,0\n3,4,1\n"


def _object(key: str, bucket: str = BUCKET) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _list(prefix: str, bucket: str = BUCKET, **context: Any) -> Request:
    return Request("s3:ListBucket", f"arn:aws:s3:::{bucket}",
                   {**TLS, "s3:prefix": prefix, **context})


@pytest.fixture
def moto_s3() -> Iterator[Any]:
    """moto's in-process AWS with the example bucket; real time (the endpoint test waits)."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        yield s3


# -- training-execution-role -------------------------------------------------------------------


def _create_training_job(s3: Any) -> dict[str, Any]:
    """start_training.py's real CreateTrainingJob request (the SDK's waits patched away)."""
    import start_training

    argv = ["--train", ST["train"], "--output-path", ST["output_path"],
            "--code-location", ST["code_location"], "--role", ST["role"],
            "--image-uri", ST["image_uri"], "--base-job-name", ST["base_job_name"],
            "--region", REGION]
    with record_calls() as calls, mock.patch("time.sleep"):
        assert start_training.main(argv, environ={}) == 0
    return next(c.params for c in calls if c.operation == "CreateTrainingJob")


def _tarball(folder: Path, name: str) -> Path:
    from local_mode.training_job import pack_folder

    folder.mkdir(parents=True)
    (folder / name).write_bytes(b"artefact")
    return pack_folder(folder, folder.parent / f"{folder.name}.tar.gz")


def test_training_execution_role_allows_what_the_training_job_does(
    moto_s3: Any, tmp_path: Path
) -> None:
    from local_mode.training_job import stage_channel, upload

    s3 = moto_s3
    s3.put_object(Bucket=BUCKET, Key="data/breast-cancer/train.csv", Body=TRAIN_CSV)
    s3.put_object(Bucket=BUCKET, Key="data/breast-cancer-x/other.csv", Body=b"not this job's")
    job = _create_training_job(s3)
    assert job["RoleArn"] == ST["role"]
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    (channel,) = job["InputDataConfig"]
    source = channel["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "S3Prefix"
    code = parse_s3_uri(json.loads(job["HyperParameters"]["sagemaker_submit_directory"]))
    output = f"{job['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{job['TrainingJobName']}"
    model_tar = _tarball(tmp_path / "model", "server.zip")
    output_tar = _tarball(tmp_path / "output-data", "metrics.json")

    with record_calls() as calls:
        # SageMaker, as the role: File mode copies the channel's S3 prefix to
        # /opt/ml/input/data/<channel> (ListObjectsV2 on the prefix, then each object);
        # local_mode.training_job.stage_channel is local mode's copy of exactly that.
        staged = stage_channel(source["S3Uri"], tmp_path / channel["ChannelName"], s3)
        # In the container, as the role: the training toolkit (sagemaker-training 5.1.4, in
        # Dockerfile.training) fetches sagemaker_submit_directory with
        # boto3.resource("s3").Bucket(b).download_file(key, dst) (files.s3_download).
        boto3.resource("s3", region_name=REGION).Bucket(code.bucket).download_file(
            code.key, str(tmp_path / "sourcedir.tar.gz"))
        # SageMaker, as the role: /opt/ml/model and /opt/ml/output/data go up as tarballs.
        upload(s3, model_tar, f"{output}/output/model.tar.gz")
        upload(s3, output_tar, f"{output}/output/output.tar.gz")

    assert staged == 1  # train.csv only: the sibling prefix is not part of the channel
    assert (tmp_path / channel["ChannelName"] / "train.csv").read_bytes() == TRAIN_CSV
    with tarfile.open(tmp_path / "sourcedir.tar.gz") as code_tar:  # the code the SDK uploaded
        assert "training_script.py" in code_tar.getnames()
    requests = _assert_all_allowed("training-execution-role", calls)
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject"} == {r.action for r in requests}

    policy = _policy("training-execution-role")
    # SageMaker, as the role: Debugger and Profiler write under the S3OutputPath the SDK set.
    for config, folder in (("DebugHookConfig", "debug-output"),
                           ("ProfilerConfig", "profiler-output")):
        part = parse_s3_prefix(job[config]["S3OutputPath"]).join(
            job["TrainingJobName"], folder, "part-0")
        assert evaluate(policy, Request("s3:PutObject", _object(part.key, part.bucket), TLS)) \
            is Decision.ALLOW, config

    listing = next(r for r in requests if r.action == "s3:ListBucket")
    read = next(r for r in requests if r.resource.endswith("/train.csv"))
    put = next(r for r in requests if r.action == "s3:PutObject")
    out_of_scope = [
        _moved(listing, context={**listing.context, "s3:prefix": "data/breast-cancer-x/"}),
        _moved(listing, context={**listing.context, "s3:prefix": "data/"}),
        _moved(listing, resource="arn:aws:s3:::other-bucket"),
        _moved(read, resource=_object("data/breast-cancer-x/other.csv")),
        _moved(read, resource=_object("data/breast-cancer/train.csv", "other-bucket")),
        _moved(read, resource=_object("clients/alice/keys/k.ekl")),
        _moved(put, resource=_object(code.key)),  # the job cannot replace its own code
        _moved(put, resource=_object("data/breast-cancer/train.csv")),
        _moved(put, resource=_object("models-x/job/output/model.tar.gz")),
        _moved(read, context={"aws:securetransport": False}),
        _moved(put, context={**put.context, "aws:securetransport": False}),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [Decision.IMPLICIT_DENY] * 9 + [
        Decision.EXPLICIT_DENY] * 2


# -- endpoint-execution-role -------------------------------------------------------------------


@contextlib.contextmanager
def _http(app: Any) -> Iterator[str]:
    """Serve a WSGI app on loopback (the container's port 8080); yield its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="container", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _container_settings(tmp_path: Path) -> Any:
    """The serving container's settings, from the environment deploy_endpoint.py gives it."""
    import deploy_endpoint
    from inference.settings import ENV_KEY_CACHE_DIR, ENV_MODEL_DIR, Settings

    args = deploy_endpoint.parse_args(["--config", str(_deploy_config(tmp_path))], environ={})
    return Settings.from_env({**deploy_endpoint.container_env(args),
                              ENV_MODEL_DIR: str(tmp_path / "opt-ml-model"),
                              ENV_KEY_CACHE_DIR: str(tmp_path / "key-cache")})


def test_endpoint_execution_role_allows_what_the_endpoint_does(
    moto_s3: Any, fixture_models: dict[str, Any], tmp_path: Path
) -> None:
    """Model download, async input, the container's reads (a lost key included), the outputs."""
    from client.predictor import EncryptedPredictor
    from inference.predictor import create_app
    from inference.s3_store import make_s3_client
    from local_mode.endpoint import extract_model
    from local_mode.runtime import LocalAsyncRuntime

    linear = fixture_models["linear"]
    model = parse_s3_uri(DP["model_data"])
    moto_s3.put_object(Bucket=BUCKET, Key=model.key, Body=_model_tar(linear.model_dir))
    settings = _container_settings(tmp_path)
    sagemaker_s3 = boto3.client("s3", region_name=REGION)  # SageMaker, as the role
    container_s3 = make_s3_client(settings)  # the server's own client, as in production
    rows = linear.raw_test[:2]
    with record_calls(clients=[sagemaker_s3, container_s3]) as calls:
        # SageMaker, as the role: model_data is downloaded and unpacked into /opt/ml/model.
        sagemaker_s3.download_file(model.bucket, model.key, str(tmp_path / "model.tar.gz"))
        extract_model(tmp_path / "model.tar.gz", settings.model_dir)
        app = create_app(settings, s3_client=container_s3)
        # SageMaker, as the role: the async front end reads InputLocation and writes the
        # response or error object (LocalAsyncRuntime is local mode's stand-in for it).
        with (_http(app) as container_url,
              LocalAsyncRuntime(endpoint_name=DP["endpoint_name"], container_url=container_url,
                                output_path=DP["output_path"], failure_path=DP["failure_path"],
                                s3_client=sagemaker_s3) as runtime,
              EncryptedPredictor(CL["endpoint_name"], DP["model_data"], CL["s3_prefix"],
                                 key_dir=tmp_path / "keys", cache_dir=tmp_path / "cache",
                                 region_name=REGION, runtime_endpoint_url=runtime.url,
                                 progress=False) as predictor):
            keys = predictor.upload_evaluation_keys()
            # The keys vanish (a lifecycle rule): the server must answer 404, not 403.
            moto_s3.delete_object(Bucket=keys.bucket, Key=keys.key)
            proba = predictor.predict_proba(rows)

    expected = linear.clear_model.predict_proba(linear.scaled_test[:2], fhe="disable")
    np.testing.assert_allclose(proba, expected)  # the recorded run really predicted
    assert predictor.timings.evaluation_key_uploads == 2  # re-uploaded after the 404
    failure_prefix = parse_s3_prefix(DP["failure_path"]).prefix
    (failure,) = moto_s3.list_objects_v2(Bucket=BUCKET, Prefix=failure_prefix)["Contents"]
    body = moto_s3.get_object(Bucket=BUCKET, Key=failure["Key"])["Body"].read()
    assert parse_error_body(body)[:2] == (404, "EvaluationKeysNotFound")

    requests = _assert_all_allowed("endpoint-execution-role", calls)
    missing = next(c for c in calls if c.error_code is not None)
    # The server sizes every object by its HEAD before a GET: the HEAD is what finds it gone.
    assert (missing.operation, missing.params["Key"]) == ("HeadObject", keys.key)
    (listing,) = [r for r in requests if r.action == "s3:ListBucket"]
    assert listing.context["s3:prefix"] == keys.key  # allowed: so S3 said 404, not 403
    client = _object(parse_s3_prefix(CL["s3_prefix"]).prefix)
    reads = {"model_data" if r.resource == _object(model.key) else
             r.resource.removeprefix(client).split("/")[0]
             for r in requests if r.action == "s3:GetObject"}
    assert reads == {"model_data", "keys", "queries", "requests"}
    writes = {r.resource.split("/")[1] for r in requests if r.action == "s3:PutObject"}
    assert writes == {"async-out", "async-fail"}

    policy = _policy("endpoint-execution-role")
    get = next(r for r in requests if "/keys/" in r.resource and r.action == "s3:GetObject")
    put = next(r for r in requests if r.action == "s3:PutObject")
    out_of_scope = [
        _moved(get, resource=_object("clients/bob/keys/k.ekl")),
        _moved(get, resource=_object("clients/alice-x/keys/k.ekl")),
        _moved(get, resource=_object("clients/alice/keys/k.ekl", "other-bucket")),
        _moved(get, resource=_object("data/breast-cancer/train.csv")),
        _moved(get, resource=_object("models/other-job/output/model.tar.gz")),
        _moved(listing, context={**listing.context, "s3:prefix": "clients/bob/keys/k.ekl"}),
        _moved(put, resource=_object(keys.key)),  # cannot plant keys for a client
        _moved(put, resource=_object("async-out-x/r.out")),
        _moved(put, resource=_object("async-out/r.out", "other-bucket")),
        _moved(get, context={"aws:securetransport": False}),
        _moved(put, context={**put.context, "aws:securetransport": False}),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [Decision.IMPLICIT_DENY] * 9 + [
        Decision.EXPLICIT_DENY] * 2


@pytest.mark.parametrize(("request_", "decision"), [
    (_list("clients/alice/keys/0a1b.ekl"), Decision.ALLOW),
    (_list("clients/alice/queries/0a1b.fheb"), Decision.ALLOW),
    (_list("clients/alice/keys/"), Decision.ALLOW),
    (_list("clients/alice/requests/0a1b.json"), Decision.IMPLICIT_DENY),  # SageMaker's read
    (_list("clients/alice/"), Decision.IMPLICIT_DENY),
    (_list(""), Decision.IMPLICIT_DENY),
    (_list("clients/"), Decision.IMPLICIT_DENY),
    (_list("clients/alice-x/keys/k.ekl"), Decision.IMPLICIT_DENY),
    (_list("clients/bob/keys/k.ekl"), Decision.IMPLICIT_DENY),
    (_list("async-out/"), Decision.IMPLICIT_DENY),
    (_list("clients/alice/keys/k.ekl", "other-bucket"), Decision.IMPLICIT_DENY),
    (Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", TLS), Decision.IMPLICIT_DENY),
    (_list("clients/alice/keys/k.ekl", **{"aws:securetransport": False}), Decision.EXPLICIT_DENY),
])
def test_endpoint_role_lists_only_the_client_keys_and_queries(
    request_: Request, decision: Decision
) -> None:
    """ListBucket (it turns S3's 403 for a missing key into a 404) stays in keys/ and queries/."""
    assert evaluate(_policy("endpoint-execution-role"), request_) is decision
