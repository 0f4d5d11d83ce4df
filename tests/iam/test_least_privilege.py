"""Each script's real AWS calls (recorded under moto) are allowed by its role, and nothing more.

The calls are recorded from the code itself (tests/iam/recorder.py), mapped to the IAM
requests AWS authorises for them, and evaluated against the policies rendered from
iam/config.example.json by tests/iam/evaluator.py. Each test also shows the evaluator rejects
out-of-scope variants of the same calls, so it can fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import numpy as np
import pytest
from moto import mock_aws

from common.contract import pack_batch, parse_request, unpack_batch
from common.s3_location import parse_s3_prefix, parse_s3_uri
from iam.render import render
from tests.iam.evaluator import Decision, Request, evaluate
from tests.iam.recorder import (
    RecordedCall,
    enforce_policies,
    record_calls,
    required_requests,
)
from tests.iam.test_templates import EXAMPLE_CONFIG

CONFIG = json.loads(EXAMPLE_CONFIG.read_text())
ACCOUNT = CONFIG["account_id"]
REGION = CONFIG["region"]
BUCKET = "acme-fhe"
ST, DP, CL = CONFIG["start_training"], CONFIG["deploy_endpoint"], CONFIG["client"]


def _policy(role: str) -> list[dict[str, Any]]:
    return [render(CONFIG, roles=[role])[f"{role}-policy.json"]]


def _assert_all_allowed(role: str, calls: list[RecordedCall]) -> list[Request]:
    requests = required_requests(calls, account=ACCOUNT)
    assert requests, "no AWS call was recorded"
    policy = _policy(role)
    refused = [f"{evaluate(policy, r).value}: {r}" for r in requests
               if evaluate(policy, r) is not Decision.ALLOW]
    assert not refused, f"{role} policy refuses:\n" + "\n".join(refused)
    return requests


def _moved(request: Request, **changes: Any) -> Request:
    return dataclasses.replace(request, **changes)


@pytest.fixture
def aws() -> Iterator[Any]:
    """moto's in-process AWS (https endpoints, like the real one) with the example bucket."""
    with mock_aws(), mock.patch("time.sleep"):
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def test_start_training_calls_are_allowed_by_the_model_trainer_policy(aws: Any) -> None:
    import start_training

    aws.put_object(Bucket=BUCKET, Key="data/breast-cancer/train.csv", Body=b"a,label\n1,0\n")
    argv = ["--train", ST["train"], "--output-path", ST["output_path"],
            "--code-location", ST["code_location"], "--role", ST["role"],
            "--image-uri", ST["image_uri"], "--base-job-name", ST["base_job_name"],
            "--region", REGION]
    with record_calls() as calls:
        assert start_training.main(argv, environ={}) == 0
    requests = _assert_all_allowed("model-trainer", calls)
    actions = {r.action for r in requests}
    assert {"s3:PutObject", "sagemaker:CreateTrainingJob", "iam:PassRole"} <= actions

    policy = _policy("model-trainer")
    put = next(r for r in requests if r.action == "s3:PutObject")
    assert put.context["s3:x-amz-server-side-encryption"] == "aws:kms"  # the SDK's default
    pass_role = next(r for r in requests if r.action == "iam:PassRole")
    create = next(r for r in requests if r.action == "sagemaker:CreateTrainingJob")
    out_of_scope = [
        _moved(put, resource="arn:aws:s3:::another-bucket/code/x/sourcedir.tar.gz"),
        _moved(put, context={"aws:securetransport": True}),  # no SSE header
        _moved(put, context={**put.context, "aws:securetransport": False}),
        _moved(pass_role, resource=f"arn:aws:iam::{ACCOUNT}:role/admin"),
        _moved(pass_role, context={"iam:passedtoservice": "ec2.amazonaws.com"}),
        _moved(create, resource=f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/other-1"),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [
        Decision.IMPLICIT_DENY, Decision.EXPLICIT_DENY, Decision.EXPLICIT_DENY,
        Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY]


def test_base_job_name_default_matches_start_training() -> None:
    import start_training
    from iam.render import DEFAULT_BASE_JOB_NAME

    assert DEFAULT_BASE_JOB_NAME == start_training.DEFAULT_BASE_JOB_NAME


def _owner_commands(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("aws s3api ")]


def test_deploy_endpoint_calls_are_allowed_by_the_endpoint_creator_policy(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Deploy and --delete acting with only the rendered endpoint-creator policy.

    Everything is allowed except writing the lifecycle rules (a bucket-wide expire power): the
    script detects the AccessDenied, prints the command, and the bucket owner (acting with the
    opt-in bucket-owner policy) runs it. A redeploy then needs no write at all.
    """
    import deploy_endpoint
    from tests.fixtures.aws_cli import run_s3api

    aws.put_object(Bucket=BUCKET, Key=parse_s3_uri(DP["model_data"]).key, Body=b"model",
                   ServerSideEncryption="AES256")
    argv = ["--model-data", DP["model_data"], "--endpoint-name", DP["endpoint_name"],
            "--output-path", DP["output_path"], "--failure-path", DP["failure_path"],
            "--role", DP["role"], "--image-uri", DP["image_uri"], "--region", REGION,
            "--instance-type", "ml.c5.4xlarge"]
    for prefix in DP["allowed_s3_prefix"]:
        argv += ["--allowed-s3-prefix", prefix]
    creator = _policy("endpoint-creator")
    owner = [render({**CONFIG, "bucket_owner_lifecycle_policy": True},
                    roles=[])["bucket-owner-lifecycle-policy.json"]]
    with enforce_policies(creator, account=ACCOUNT) as refused, record_calls() as calls:
        assert deploy_endpoint.main(argv) == 0
    assert [r.action for r in refused] == ["s3:PutLifecycleConfiguration"]
    [command] = _owner_commands(capsys.readouterr().out)
    assert "sagemaker:CreateEndpoint" in {r.action for r in required_requests(calls,
                                                                              account=ACCOUNT)}
    with pytest.raises(aws.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):
        aws.get_bucket_lifecycle_configuration(Bucket=BUCKET)
    with enforce_policies(owner, account=ACCOUNT) as owner_refused:
        run_s3api(aws, command)
    assert not owner_refused
    rules = aws.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert len(rules) == 5
    assert all(r["ID"].startswith(f"concrete-fhe-kit:{DP['endpoint_name']}:") for r in rules)

    with enforce_policies(creator, account=ACCOUNT) as refused, record_calls() as again:
        assert deploy_endpoint.main(argv) == 0  # the rules are there: nothing to write
        assert not refused
        assert deploy_endpoint.main([*argv, "--delete"]) == 0
    assert [r.action for r in refused] == ["s3:PutLifecycleConfiguration"]
    [removal] = _owner_commands(capsys.readouterr().out)
    assert removal == f"aws s3api delete-bucket-lifecycle --bucket {BUCKET}"
    with enforce_policies(owner, account=ACCOUNT) as owner_refused:
        run_s3api(aws, removal)
    assert not owner_refused
    with pytest.raises(aws.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):
        aws.get_bucket_lifecycle_configuration(Bucket=BUCKET)

    requests = _assert_all_allowed("endpoint-creator", [
        c for c in [*calls, *again] if c.operation not in (
            "PutBucketLifecycleConfiguration", "DeleteBucketLifecycle")])
    assert {"sagemaker:CreateEndpoint", "iam:PassRole", "s3:GetLifecycleConfiguration",
            "sagemaker:DeleteEndpoint"} <= {r.action for r in requests}
    pass_role = next(r for r in requests if r.action == "iam:PassRole")
    create = next(r for r in requests if r.action == "sagemaker:CreateEndpoint")
    scale = next(r for r in requests if r.action.endswith("RegisterScalableTarget"))
    read = next(r for r in requests if r.action == "s3:GetLifecycleConfiguration")
    out_of_scope = [
        _moved(pass_role, resource=f"arn:aws:iam::{ACCOUNT}:role/admin"),
        _moved(create, resource=f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/prod-other"),
        _moved(scale, context={**scale.context,
                               "application-autoscaling:service-namespace": "ecs"}),
        _moved(read, resource="arn:aws:s3:::another-bucket"),
        _moved(read, action="s3:PutLifecycleConfiguration"),
    ]
    assert all(evaluate(creator, r) is Decision.IMPLICIT_DENY for r in out_of_scope)
    write = _moved(read, action="s3:PutLifecycleConfiguration")
    assert evaluate(owner, write) is Decision.ALLOW
    assert evaluate(owner, _moved(write, resource="arn:aws:s3:::another-bucket")) is (
        Decision.IMPLICIT_DENY)


def _example_training_job(name: str = f"{ST['base_job_name']}-2026-01-02-03-04-05-678") -> str:
    """A completed job (moto's default) of the example config, writing under its output_path."""
    boto3.client("sagemaker", region_name=REGION).create_training_job(
        TrainingJobName=name, RoleArn=ST["role"],
        AlgorithmSpecification={"TrainingImage": ST["image_uri"], "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": ST["output_path"]},
        ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    return name


@pytest.mark.parametrize("flag", ["--latest-training-job", "--training-job"])
def test_deploying_a_training_jobs_model_is_allowed_once_configured(aws: Any, flag: str) -> None:
    """``--latest-training-job`` / ``--training-job``: the lookup and the model read are granted
    by the policies rendered with that option in the config, and only for those jobs."""
    import deploy_endpoint

    sagemaker = boto3.client("sagemaker", region_name=REGION)
    job = _example_training_job()
    _example_training_job("other-2026-01-02-03-04-05-678")
    value = ST["base_job_name"] if flag == "--latest-training-job" else job
    config = {**CONFIG, "deploy_endpoint": {
        **{k: v for k, v in DP.items() if k != "model_data"}, flag[2:].replace("-", "_"): value}}
    argv = [flag, value, "--endpoint-name", DP["endpoint_name"], "--output-path",
            DP["output_path"], "--failure-path", DP["failure_path"], "--role", DP["role"],
            "--image-uri", DP["image_uri"], "--region", REGION, "--instance-type", "ml.c5.4xlarge",
            "--no-lifecycle",  # the bucket owner's (test_deploy_endpoint_calls_are_allowed_...)
            *(a for p in DP["allowed_s3_prefix"] for a in ("--allowed-s3-prefix", p))]
    with record_calls() as calls:
        assert deploy_endpoint.main(argv) == 0
    requests = required_requests(calls, account=ACCOUNT)
    creator = [render(config, roles=["endpoint-creator"])["endpoint-creator-policy.json"]]
    refused = [r for r in requests if evaluate(creator, r) is not Decision.ALLOW]
    assert not refused, refused
    lookups = {r.action for r in requests if "TrainingJob" in r.action}
    assert lookups == ({"sagemaker:DescribeTrainingJob", "sagemaker:ListTrainingJobs"}
                       if flag == "--latest-training-job" else {"sagemaker:DescribeTrainingJob"})
    # the old example policy (a fixed model_data) refuses the lookup: the gap this closes
    assert any(evaluate(_policy("endpoint-creator"), r) is not Decision.ALLOW for r in requests)
    describe = next(r for r in requests if r.action == "sagemaker:DescribeTrainingJob")
    assert evaluate(creator, _moved(describe, resource=describe.resource.replace(
        job.lower(), "other-2026-01-02-03-04-05-678"))) is Decision.IMPLICIT_DENY

    # the endpoint's role may read the model the job wrote, and no other job's
    model_url = sagemaker.describe_model(ModelName=next(
        c.params["ModelName"] for c in calls if c.operation == "CreateModel")
    )["PrimaryContainer"]["ModelDataUrl"]
    assert model_url == f"{ST['output_path']}/{job}/output/model.tar.gz"
    role = [render(config, roles=["endpoint-execution-role"])[
        "endpoint-execution-role-policy.json"]]
    read = Request("s3:GetObject", f"arn:aws:s3:::{model_url.removeprefix('s3://')}",
                   {"aws:securetransport": True})
    assert evaluate(role, read) is Decision.ALLOW
    assert evaluate(role, _moved(read, resource=read.resource.replace(
        job, "other-2026-01-02-03-04-05-678"))) is Decision.IMPLICIT_DENY


def _deploy_config(tmp_path: Path) -> Path:
    """The IAM config's deploy_endpoint section, written as deploy_endpoint.py's own --config."""
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(DP))
    return path


@pytest.mark.skipif(importlib.util.find_spec("deploy_endpoint") is None,
                    reason="deploy_endpoint.py is not in this checkout yet")
def test_delete_prefix_calls_are_allowed_by_the_endpoint_creator_policy(
    aws: Any, tmp_path: Path
) -> None:
    """``--delete --delete-prefix`` (from the IAM config, by the script's own option names)."""
    import deploy_endpoint

    aws.put_object(Bucket=BUCKET, Key=parse_s3_uri(DP["model_data"]).key, Body=b"model")
    config = ["--config", str(_deploy_config(tmp_path)), "--region", REGION]
    assert deploy_endpoint.main(config) == 0
    doomed = {parse_s3_prefix(p).join(name).key
              for p in DP["delete_prefix"] for name in ("a.bin", "sub/b.bin")}
    kept = {"clients/alice-x/keys/k.ekl", "clients/bob/keys/k.ekl", "async-out-x/r.out",
            parse_s3_uri(DP["model_data"]).key}
    for key in doomed | kept - {parse_s3_uri(DP["model_data"]).key}:
        aws.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    aws.create_bucket(Bucket="other-bucket")
    aws.put_object(Bucket="other-bucket", Key="clients/alice/keys/k.ekl", Body=b"x")

    with (enforce_policies(_policy("endpoint-creator"), account=ACCOUNT) as refused,
          record_calls() as calls):
        assert deploy_endpoint.main([*config, "--delete"]) == 0
    assert [r.action for r in refused] == ["s3:PutLifecycleConfiguration"]  # the owner's
    calls = [c for c in calls if c.error_code != "AccessDenied"]
    remaining = {o["Key"] for o in aws.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert remaining == kept  # the prefixes were emptied, the siblings survived
    assert aws.list_objects_v2(Bucket="other-bucket")["KeyCount"] == 1

    requests = _assert_all_allowed("endpoint-creator", calls)
    deletes = [r for r in requests if r.action == "s3:DeleteObject"]
    assert {r.resource for r in deletes} == {f"arn:aws:s3:::{BUCKET}/{k}" for k in doomed}
    lists = [r for r in requests if r.action == "s3:ListBucket"]
    assert {r.context["s3:prefix"] for r in lists} == {
        "clients/alice/", "async-out/", "async-fail/"}
    assert "sagemaker:DeleteEndpoint" in {r.action for r in requests}

    policy = _policy("endpoint-creator")
    list_, delete = lists[0], deletes[0]
    http = {"aws:securetransport": False}
    out_of_scope = [
        _moved(list_, resource="arn:aws:s3:::other-bucket"),
        _moved(list_, context={**list_.context, "s3:prefix": "clients/alice-x/"}),
        _moved(list_, context={**list_.context, "s3:prefix": "clients/"}),
        _moved(list_, context={**list_.context, "s3:prefix": ""}),
        _moved(delete, resource="arn:aws:s3:::other-bucket/clients/alice/keys/k.ekl"),
        _moved(delete, resource=f"arn:aws:s3:::{BUCKET}/clients/alice-x/keys/k.ekl"),
        _moved(delete, resource=f"arn:aws:s3:::{BUCKET}/{parse_s3_uri(DP['model_data']).key}"),
        _moved(delete, action="s3:GetObject"),  # may delete the clients' objects, never read
        _moved(list_, context={**list_.context, **http}),
        _moved(delete, context={**delete.context, **http}),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [Decision.IMPLICIT_DENY] * 8 + [
        Decision.EXPLICIT_DENY] * 2


def _model_tar(model_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _serve_like_sagemaker(model_dir: Path) -> Any:
    """moto's InvokeEndpointAsync, replaced by the real FHE computation and the async S3 layout.

    Runs inside moto (no botocore call, so nothing is recorded): reads the request JSON, runs
    the compiled circuit on every ciphertext and writes ``<output_path>/<id>.out``.
    """
    from concrete.ml.deployment import FHEModelServer
    from moto.s3.models import s3_backends

    server = FHEModelServer(str(model_dir))
    server.load()

    def invoke(backend: Any, endpoint_name: str, input_location: str) -> tuple[str, str]:
        assert endpoint_name == DP["endpoint_name"]
        s3 = s3_backends[ACCOUNT]["aws"]

        def read(uri: str) -> bytes:
            loc = parse_s3_uri(uri)
            return bytes(s3.get_object(loc.bucket, loc.key).value)

        request = parse_request(read(input_location))
        keys = read(str(request.evaluation_keys_uri))
        results = [server.run(item, keys)
                   for item in unpack_batch(read(str(request.query_uris[0])))]
        inference_id = input_location.rsplit("/", 1)[1].removesuffix(".json")
        out, fail = parse_s3_prefix(DP["output_path"]), parse_s3_prefix(DP["failure_path"])
        output = out.join(f"{inference_id}.out")
        s3.put_object(output.bucket, output.key, pack_batch(results))
        return str(output), str(fail.join(f"{inference_id}-error.out"))

    return invoke


def test_client_calls_are_allowed_by_the_inference_client_policy(
    aws: Any, fixture_models: dict[str, Any], tmp_path: Path
) -> None:
    from moto.sagemakerruntime.models import SageMakerRuntimeBackend

    from client.predictor import EncryptedPredictor

    linear = fixture_models["linear"]
    model_key = parse_s3_uri(DP["model_data"]).key
    aws.put_object(Bucket=BUCKET, Key=model_key, Body=_model_tar(linear.model_dir))
    rows = linear.raw_test[:2]
    fake_endpoint = _serve_like_sagemaker(linear.model_dir)
    with (mock.patch.object(SageMakerRuntimeBackend, "invoke_endpoint_async", fake_endpoint),
          record_calls() as calls,
          EncryptedPredictor(CL["endpoint_name"], DP["model_data"], CL["s3_prefix"],
                             key_dir=tmp_path / "keys", cache_dir=tmp_path / "cache",
                             region_name=REGION, progress=False) as predictor):
        proba = predictor.predict_proba(rows)
    expected = linear.clear_model.predict_proba(linear.scaled_test[:2], fhe="disable")
    np.testing.assert_allclose(proba, expected)  # the recorded run really predicted

    requests = _assert_all_allowed("inference-client", calls)
    recorded = {str(c) for c in calls}
    assert {"s3:PutObject", "s3:HeadObject", "s3:GetObject", "s3:DeleteObjects",
            "sagemaker-runtime:InvokeEndpointAsync"} <= recorded
    puts = [r for r in requests if r.action == "s3:PutObject"]
    assert puts and all(r.context["s3:x-amz-server-side-encryption"] == "AES256" for r in puts)

    policy = _policy("inference-client")
    invoke = next(r for r in requests if r.action == "sagemaker:InvokeEndpointAsync")
    out_of_scope = [
        _moved(puts[0], resource="arn:aws:s3:::another-bucket/clients/alice/keys/k.ekl"),
        _moved(puts[0], resource=f"arn:aws:s3:::{BUCKET}/clients/bob/keys/k.ekl"),
        _moved(puts[0], context={"aws:securetransport": True}),
        _moved(puts[0], context={**puts[0].context, "s3:x-amz-server-side-encryption": "none"}),
        _moved(invoke, resource=f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/other"),
        Request("s3:GetObject", f"arn:aws:s3:::{BUCKET}/data/breast-cancer/train.csv",
                {"aws:securetransport": True}),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [
        Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY, Decision.EXPLICIT_DENY,
        Decision.EXPLICIT_DENY, Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY]


def test_server_calls_are_allowed_by_the_endpoint_execution_role(
    aws: Any, fixture_models: dict[str, Any], tmp_path: Path
) -> None:
    """The container's S3 reads, including the 404 of keys a lifecycle rule expired."""
    from concrete.ml.deployment import FHEModelClient

    from common.contract import build_request, parse_error_body
    from inference.predictor import create_app
    from inference.settings import Settings, parse_allowed_prefix

    linear = fixture_models["linear"]
    fhe = FHEModelClient(str(linear.model_dir), key_dir=str(tmp_path / "keys"))
    fhe.generate_private_and_evaluation_keys()
    prefix = parse_s3_prefix(CL["s3_prefix"])
    keys, query = prefix.join("keys", "k.ekl").key, prefix.join("queries", "q.bin").key
    aws.put_object(Bucket=BUCKET, Key=keys, Body=fhe.get_serialized_evaluation_keys())
    aws.put_object(Bucket=BUCKET, Key=query,
                   Body=fhe.quantize_encrypt_serialize(linear.scaled_test[:1]))
    settings = Settings(model_dir=linear.model_dir, key_cache_dir=tmp_path / "cache",
                        allowed_prefixes=tuple(map(parse_allowed_prefix,
                                                   DP["allowed_s3_prefix"])))
    app = create_app(settings, s3_client=boto3.client("s3", region_name=REGION)).test_client()
    body = build_request(evaluation_keys_uri=f"s3://{BUCKET}/{keys}",
                         encrypted_query_uri=f"s3://{BUCKET}/{query}")
    with record_calls() as calls:
        ok = app.post("/invocations", data=body, content_type="application/json")
    aws.delete_object(Bucket=BUCKET, Key=keys)  # what the keys/ lifecycle rule does
    with record_calls() as expired:
        missing = app.post("/invocations", data=body, content_type="application/json")
    assert ok.status_code == 200, ok.data[:300]
    np.testing.assert_allclose(fhe.deserialize_decrypt_dequantize(ok.data),
                               linear.clear_model.predict_proba(linear.scaled_test[:1],
                                                                fhe="disable"))
    assert parse_error_body(missing.data)[:2] == (404, "EvaluationKeysNotFound")

    requests = _assert_all_allowed("endpoint-execution-role", [*calls, *expired])
    assert {str(c) for c in calls} == {"s3:HeadObject", "s3:GetObject"}
    list_bucket = next(r for r in requests if r.action == "s3:ListBucket")
    get = next(r for r in requests if r.action == "s3:GetObject")
    policy = _policy("endpoint-execution-role")
    out_of_scope = [
        _moved(get, resource=f"arn:aws:s3:::{BUCKET}/clients/bob/keys/k.ekl"),
        _moved(get, resource=f"arn:aws:s3:::{BUCKET}/data/breast-cancer/train.csv"),
        _moved(list_bucket, resource="arn:aws:s3:::another-bucket"),
        _moved(get, context={"aws:securetransport": False}),
    ]
    assert [evaluate(policy, r) for r in out_of_scope] == [
        Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY,
        Decision.EXPLICIT_DENY]


def test_a_client_finding_its_model_by_training_job_is_allowed_once_configured(
    aws: Any, fixture_models: dict[str, Any], tmp_path: Path
) -> None:
    """``EncryptedPredictor.from_training_job(base_job_name=…)``: ListTrainingJobs,
    DescribeTrainingJob and the model's download are granted by the client policy rendered with
    ``client.latest_training_job``, and the downloaded model is the job's."""
    from client.predictor import EncryptedPredictor

    job = _example_training_job()
    linear = fixture_models["linear"]
    model_key = parse_s3_prefix(ST["output_path"]).join(f"{job}/output/model.tar.gz").key
    aws.put_object(Bucket=BUCKET, Key=model_key, Body=_model_tar(linear.model_dir))
    with record_calls() as calls, EncryptedPredictor.from_training_job(
            CL["endpoint_name"], CL["s3_prefix"], base_job_name=ST["base_job_name"],
            region_name=REGION, key_dir=tmp_path / "keys", cache_dir=tmp_path / "cache",
            progress=False) as predictor:
        assert predictor.model.manifest.client_fingerprint == linear.manifest.client_fingerprint
    config = {**CONFIG, "client": {**CL, "latest_training_job": ST["base_job_name"]}}
    policy = [render(config, roles=["inference-client"])["inference-client-policy.json"]]
    requests = required_requests(calls, account=ACCOUNT)
    assert {"sagemaker:ListTrainingJobs", "sagemaker:DescribeTrainingJob",
            "s3:GetObject"} <= {r.action for r in requests}
    refused = [r for r in requests if evaluate(policy, r) is not Decision.ALLOW]
    assert not refused, refused
    assert any(evaluate(_policy("inference-client"), r) is not Decision.ALLOW for r in requests)
    read = next(r for r in requests if r.action == "s3:GetObject")
    assert read.resource == f"arn:aws:s3:::{BUCKET}/{model_key}"
    assert evaluate(policy, _moved(read, resource=read.resource.replace(
        job, "other-2026-01-02-03-04-05-678"))) is Decision.IMPLICIT_DENY
