"""deploy_endpoint.py against moto's mocked control plane, its config layering, --local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

import deploy_endpoint
from deploy_endpoint import DeployError, Names, parse_args
from local_mode.processes import wait_for_ready_file
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import wait_for_object

ROLE = "arn:aws:iam::123456789012:role/fhe-endpoint"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/concrete-inference:1.9.0"
NAME = "fhe-test-endpoint"


def deploy_argv(**extra: str) -> list[str]:
    argv = ["--endpoint-name", NAME, "--image-uri", IMAGE, "--role", ROLE,
            "--model-data", "s3://models/job/output/model.tar.gz",
            "--output-path", "s3://results/async-out", "--failure-path", "s3://results/async-fail",
            "--success-topic", "arn:aws:sns:us-east-1:123456789012:ok",
            "--error-topic", "arn:aws:sns:us-east-1:123456789012:err",
            "--max-capacity", "3", "--timeout", "900"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", value]
    return argv


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's control plane and the deployment's bucket; the SDK's polling sleeps patched out."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    with mock_aws():
        boto3.client("s3", region_name=LOCAL_REGION).create_bucket(Bucket="results")
        yield


def test_deploy_creates_async_endpoint_and_scale_to_zero(
        aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy_endpoint.main(deploy_argv()) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.split("\ndeployed ", 1)[1])
    assert summary["invocation_timeout_seconds"] == 960
    sm = boto3.client("sagemaker", region_name=LOCAL_REGION)
    model = sm.describe_model(ModelName=Names(NAME).model)
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == "s3://models/job/output/model.tar.gz"
    assert container["Environment"] == {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "900",
                                        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                                        "FHE_ALLOWED_S3_PREFIXES": "s3://results"}
    endpoint = sm.describe_endpoint(EndpointName=NAME)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    async_config = config["AsyncInferenceConfig"]
    assert async_config["OutputConfig"]["S3OutputPath"] == "s3://results/async-out"
    assert async_config["OutputConfig"]["S3FailurePath"] == "s3://results/async-fail"
    assert async_config["OutputConfig"]["NotificationConfig"] == {
        "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:ok",
        "ErrorTopic": "arn:aws:sns:us-east-1:123456789012:err"}
    assert async_config["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 1
    variant = config["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1800

    scaling = boto3.client("application-autoscaling", region_name=LOCAL_REGION)
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in target] == [
        (f"endpoint/{NAME}/variant/AllTraffic", 0, 3)]
    policies = {p["PolicyName"]: p for p in
                scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    tracking = policies[Names(NAME).target_policy]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == \
        "ApproximateBacklogSizePerInstance"
    wake = policies[Names(NAME).wake_policy]
    assert wake["PolicyType"] == "StepScaling"
    alarms = boto3.client("cloudwatch", region_name=LOCAL_REGION).describe_alarms(
        AlarmNames=[Names(NAME).wake_alarm])["MetricAlarms"]
    assert alarms[0]["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarms[0]["AlarmActions"] == [wake["PolicyARN"]]


def test_delete_removes_everything_and_prefixes(aws: None) -> None:
    assert deploy_endpoint.main(deploy_argv()) == 0
    s3 = boto3.client("s3", region_name=LOCAL_REGION)
    s3.create_bucket(Bucket="queries")
    for i in range(3):
        s3.put_object(Bucket="queries", Key=f"fhe/queries/{i}.bin", Body=b"x")
    s3.put_object(Bucket="queries", Key="keep/me", Body=b"x")
    assert deploy_endpoint.main(["--endpoint-name", NAME, "--delete",
                                 "--delete-prefix", "s3://queries/fhe"]) == 0
    sm = boto3.client("sagemaker", region_name=LOCAL_REGION)
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    scaling = boto3.client("application-autoscaling", region_name=LOCAL_REGION)
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    cloudwatch = boto3.client("cloudwatch", region_name=LOCAL_REGION)
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="queries").get("Contents", [])]
    assert keys == ["keep/me"]
    # Idempotent: deleting again skips what is gone.
    assert deploy_endpoint.main(["--endpoint-name", NAME, "--delete"]) == 0


def test_options_layer_flags_over_env_over_config(tmp_path: Path) -> None:
    config = tmp_path / "deploy.json"
    config.write_text(json.dumps({"endpoint-name": "from-file", "role": ROLE, "timeout": 100,
                                  "image_uri": IMAGE, "model_data": "s3://m/model.tar.gz",
                                  "output_path": "s3://o/out", "failure_path": "s3://o/fail"}))
    env = {"FHE_DEPLOY_TIMEOUT": "200", "FHE_DEPLOY_ALLOWED_S3_PREFIX": "s3://bkt-a/x,s3://bkt-b/y"}
    args = parse_args(["--config", str(config), "--endpoint-name", "from-flag"], env)
    assert (args.endpoint_name, args.timeout, args.role) == ("from-flag", 200, ROLE)
    assert args.allowed_s3_prefix == ("s3://bkt-a/x", "s3://bkt-b/y")


def test_missing_options_are_listed_with_the_fix() -> None:
    with pytest.raises(DeployError, match=r"missing --image-uri, --model-data \(or "
                                          r"--training-job / --latest-training-job\), --role, "
                                          r"--output-path, --failure-path: pass them as flags"):
        parse_args(["--endpoint-name", NAME], {})


def test_one_model_source_only() -> None:
    argv = _without_model_data()
    with pytest.raises(DeployError, match=r"give one model source, not --model-data, "
                                          r"--latest-training-job"):
        parse_args([*deploy_argv(), "--latest-training-job", "mnist"], {})
    with pytest.raises(DeployError, match=r"--model-dir is for --local only"):
        parse_args([*argv, "--model-dir", "/tmp/m"], {})


def _without_model_data() -> list[str]:
    argv = deploy_argv()
    index = argv.index("--model-data")
    return argv[:index] + argv[index + 2:]


def _training_job(name: str) -> None:
    boto3.client("sagemaker", region_name=LOCAL_REGION).create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://models/MNIST"},
        ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})


@pytest.mark.parametrize(("flag", "value", "job"), [
    ("--latest-training-job", "mnist", "mnist-1-newer"),  # the newest, not the first listed
    ("--training-job", "mnist-2-older", "mnist-2-older"),
])
def test_deploys_the_model_of_a_training_job(aws: None, flag: str, value: str, job: str) -> None:
    for name in ("mnist-2-older", "mnist-1-newer"):
        _training_job(name)
    assert deploy_endpoint.main([*_without_model_data(), flag, value]) == 0
    sm = boto3.client("sagemaker", region_name=LOCAL_REGION)
    container = sm.describe_model(ModelName=Names(NAME).model)["PrimaryContainer"]
    assert container["ModelDataUrl"] == f"s3://models/MNIST/{job}/output/model.tar.gz"


def test_an_unknown_training_job_is_a_clear_error(aws: None, caplog: pytest.LogCaptureFixture
                                                  ) -> None:
    assert deploy_endpoint.main([*_without_model_data(), "--training-job", "missing-job"]) == 2
    assert "training job 'missing-job' not found" in caplog.text
    assert boto3.client("sagemaker", region_name=LOCAL_REGION).list_models()["Models"] == []


def test_local_endpoint_end_to_end(fixture_models: dict[str, FixtureModel],
                                   s3_server: LocalS3Server, tmp_path: Path) -> None:
    """--local with --model-data from S3: serve + runtime; boto3 invoke_endpoint_async works."""
    import tarfile

    from concrete.ml.deployment import FHEModelClient

    model = fixture_models["linear"]
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    bucket = f"local-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    s3.create_bucket(Bucket=bucket)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in model.model_dir.iterdir():
            tar.add(item, arcname=item.name)
    s3.upload_file(str(archive), bucket, "job/output/model.tar.gz")
    ready = tmp_path / "ready.json"
    env = {**os.environ, **s3_server.env()}
    process = subprocess.Popen(
        [sys.executable, "deploy_endpoint.py", "--local", "--endpoint-name", "local-ep",
         "--model-data", f"s3://{bucket}/job/output/model.tar.gz",
         "--output-path", f"s3://{bucket}/async-out", "--failure-path", f"s3://{bucket}/async-fail",
         "--ready-file", str(ready)],
        cwd=Path(deploy_endpoint.__file__).parent, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        info = wait_for_ready_file(ready, timeout=180, process=process)
        assert info["endpoint_name"] == "local-ep"
        assert info["s3_endpoint_url"] == s3_server.endpoint_url
        client = FHEModelClient(str(model.model_dir), key_dir=str(tmp_path / "keys"))
        client.generate_private_and_evaluation_keys()
        row = model.scaled_test[4]
        s3.put_object(Bucket=bucket, Key="fhe/keys/k.ekl",
                      Body=client.get_serialized_evaluation_keys())
        s3.put_object(Bucket=bucket, Key="fhe/q.bin",
                      Body=client.quantize_encrypt_serialize(row[None, :]))
        s3.put_object(Bucket=bucket, Key="fhe/r.json", Body=json.dumps({
            "evaluation_keys_uri": f"s3://{bucket}/fhe/keys/k.ekl",
            "encrypted_query_uri": f"s3://{bucket}/fhe/q.bin"}).encode())
        runtime = boto3.client("sagemaker-runtime", endpoint_url=info["runtime_url"],
                               region_name=LOCAL_REGION)
        out = runtime.invoke_endpoint_async(EndpointName="local-ep",
                                            InputLocation=f"s3://{bucket}/fhe/r.json")
        result = wait_for_object(s3, out["OutputLocation"])
        np.testing.assert_allclose(client.deserialize_decrypt_dequantize(result),
                                   model.clear_model.predict_proba(row[None, :], fhe="disable"))
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert "endpoint local-ep ready: runtime http://127.0.0.1:" in output


def test_bad_allowed_prefixes_are_refused_before_anything_is_created() -> None:
    env = {"FHE_DEPLOY_ALLOWED_S3_PREFIX": "s3://bkt-a/x/../y,s3://bkt-a/%2f"}
    with pytest.raises(DeployError, match=r"bad --allowed-s3-prefix: .*'\.\.' segment; .*'%'"):
        parse_args(["--endpoint-name", NAME, "--image-uri", IMAGE, "--model-data",
                    "s3://m-1/model.tar.gz", "--role", ROLE, "--output-path", "s3://o-1/out",
                    "--failure-path", "s3://o-1/fail"], env)
