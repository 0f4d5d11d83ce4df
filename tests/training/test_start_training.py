"""start_training.py: SageMaker jobs (control plane mocked by moto) and --local (real S3 server)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws
from sklearn.datasets import load_breast_cancer

import start_training
from start_training import LaunchConfigError, LaunchSettings, main

ROLE = "arn:aws:iam::123456789012:role/fhe-training"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/concrete-training:1.9.0"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's in-process AWS, and no SDK sleeps while polling the (instant) job."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr("sagemaker.session.time.sleep", lambda seconds: None)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="fhe-bucket")
        yield


def _tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return sorted(archive.getnames())


# Runs training_script.py the way the training toolkit does (``python training_script.py``
# from the unpacked sourcedir), with only the interpreter's site-packages besides the sourcedir:
# the checkout (and the kit's editable install) is hidden, so a missing package fails here.
_ISOLATED_RUN = """
import atexit, runpy, sys
code = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
keep = [p for p in sys.path if p.startswith(sys.base_prefix) or "site-packages" in p]
sys.path[:] = [code, *keep]
sys.argv = [code + "/training_script.py", *sys.argv[2:]]


@atexit.register  # the script ends the process itself (common.process.run_main)
def report_modules_loaded_from_outside_the_sourcedir():
    kit = {m.__file__ for name, m in list(sys.modules.items())
           if name.split(".")[0] in ("common", "training", "inference", "client", "local_mode")
           and getattr(m, "__file__", None)}
    print("outside:", sorted(f for f in kit if not f.startswith(code)), flush=True)


runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train_from_the_uploaded_code_alone(sourcedir: bytes, root: Path) -> None:
    code, data, model = root / "code", root / "data", root / "model"
    with tarfile.open(fileobj=io.BytesIO(sourcedir), mode="r:gz") as archive:
        archive.extractall(code, filter="data")
    data.mkdir()
    x, y = load_breast_cancer(return_X_y=True)
    np.save(data / "x_features.npy", x[:120])
    np.save(data / "x_labels.npy", y[:120])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _ISOLATED_RUN, str(code), "--model-dir", str(model),
         "--train", str(data), "--output-data-dir", str(root / "output"),
         "--model", "LogisticRegression", "--n_bits", "4"],
        cwd=code, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "outside: []" in result.stdout
    assert sorted(p.name for p in model.iterdir()) == ["client.zip", "manifest.json",
                                                       "server.zip"]


def test_sagemaker_job_has_image_role_instance_hyperparameters_channel_output(
        aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result_file = tmp_path / "result.json"
    code = main([
        "--role", ROLE, "--image-uri", IMAGE, "--instance-type", "ml.m5.large",
        "--train", "s3://fhe-bucket/data/", "--output-path", "s3://fhe-bucket/models",
        "--code-location", "s3://fhe-bucket/code", "--job-name", "fhe-job-1", "--no-logs",
        "-H", "model=DecisionTreeClassifier", "-H", "max_depth=2", "-H", "n_bits=3",
        "--result-file", str(result_file),
    ], environ={})
    assert code == 0
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName="fhe-job-1")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["RoleArn"] == ROLE
    assert job["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    hps = {k: json.loads(v) for k, v in job["HyperParameters"].items()}
    assert {k: hps[k] for k in ("model", "max_depth", "n_bits")} == {
        "model": "DecisionTreeClassifier", "max_depth": "2", "n_bits": "3"}
    assert hps["sagemaker_program"] == "training_script.py"
    assert hps["sagemaker_submit_directory"] == "s3://fhe-bucket/code/fhe-job-1/source/sourcedir.tar.gz"
    [channel] = job["InputDataConfig"]
    assert channel["ChannelName"] == "training"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://fhe-bucket/data/"
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://fhe-bucket/models"
    assert job["EnableInterContainerTrafficEncryption"] is True  # on by default, as the sample

    body = boto3.client("s3").get_object(Bucket="fhe-bucket",
                                         Key="code/fhe-job-1/source/sourcedir.tar.gz")["Body"]
    source = body.read()
    names = _tar_names(source)
    assert {"training_script.py", "training/training_script.py", "common/artifact.py",
            "common/files.py", "common/process.py"} <= set(names)
    assert not any(name.split("/")[0] in ("inference", "client", "local_mode") for name in names)
    _train_from_the_uploaded_code_alone(source, tmp_path / "job")

    expected = "s3://fhe-bucket/models/fhe-job-1/output/model.tar.gz"
    assert f"model_data: {expected}" in capsys.readouterr().out.splitlines()
    assert json.loads(result_file.read_text()) == {
        "job_name": "fhe-job-1", "model_data": expected,
        "output_data": "s3://fhe-bucket/models/fhe-job-1/output/output.tar.gz"}


def test_settings_from_env_and_config_file(aws: None, tmp_path: Path) -> None:
    config = tmp_path / "launch.json"
    config.write_text(json.dumps({
        "role": "arn:aws:iam::123456789012:role/from-config", "image_uri": "config-image",
        "train": "s3://fhe-bucket/data/", "output_path": "s3://fhe-bucket/models",
        "wait": False, "hyperparameters": {"model": "XGBClassifier", "n_estimators": 5},
    }))
    code = main(["--config", str(config), "--job-name", "fhe-job-2", "-H", "max_depth=2"],
                environ={"FHE_TRAINING_IMAGE_URI": "env-image"})
    assert code == 0
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName="fhe-job-2")
    assert job["AlgorithmSpecification"]["TrainingImage"] == "env-image"  # env beats config
    assert job["RoleArn"].endswith("role/from-config")
    hps = {k: json.loads(v) for k, v in job["HyperParameters"].items()}
    assert (hps["model"], hps["n_estimators"], hps["max_depth"]) == ("XGBClassifier", "5", "2")
    # default code location: the output path
    assert hps["sagemaker_submit_directory"].startswith("s3://fhe-bucket/models/fhe-job-2/")


def test_inter_container_traffic_encryption_can_be_turned_off(aws: None, tmp_path: Path) -> None:
    config = tmp_path / "launch.json"
    config.write_text(json.dumps({"encrypt_inter_container_traffic": True}))
    code = main(["--role", ROLE, "--image-uri", IMAGE, "--train", "s3://fhe-bucket/data/",
                 "--output-path", "s3://fhe-bucket/models", "--job-name", "fhe-job-plain",
                 "--no-logs", "--config", str(config), "--no-encrypt-inter-container-traffic"],
                environ={})
    assert code == 0
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName="fhe-job-plain")
    assert job["EnableInterContainerTrafficEncryption"] is False


def test_flags_beat_env_and_config(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"instance_type": "ml.c5.xlarge", "local": True,
                                  "output_path": "s3://b-config/x", "train": "/data"}))
    settings = LaunchSettings.resolve(
        ["--config", str(config), "--output-path", "s3://b-flag/x"],
        {"FHE_TRAINING_OUTPUT_PATH": "s3://b-env/x", "FHE_TRAINING_INSTANCE_TYPE": "ml.m5.large"})
    assert settings.output_path == "s3://b-flag/x"
    assert settings.instance_type == "ml.m5.large"
    assert settings.local is True


def test_missing_settings_and_bad_hyperparameters_are_all_reported(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--train", "./data", "-H", "model=Nope"], environ={})
    assert code == 2
    err = capsys.readouterr().err
    for part in ("--train must be an s3:// prefix on SageMaker", "--output-path is required",
                 "--role is required", "--image-uri is required", "unknown model type 'Nope'"):
        assert part in err


@pytest.mark.parametrize(("argv", "match"), [
    (["--local", "--train", "d", "--output-path", "not-s3"], "'--output-path' must look like"),
    (["--local", "--train", "d", "--output-path", "s3://bkt/p", "-H", "n_bits"], "KEY=VALUE"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_invalid_settings(argv: list[str], match: str) -> None:
    with pytest.raises(LaunchConfigError, match=match):
        LaunchSettings.resolve(argv, {})


def test_unknown_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"rol": "x"}))
    with pytest.raises(LaunchConfigError, match=r"unknown keys in .*: rol"):
        LaunchSettings.resolve(["--config", str(config)], {})


@pytest.mark.slow
def test_local_mode_trains_and_uploads_like_sagemaker(
        s3_env: dict[str, str], s3_client: object, bucket: str, tmp_path: Path,
        breast_cancer: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    for name, array in (("bc_features.npy", breast_cancer[0]), ("bc_labels.npy", breast_cancer[1])):
        buffer = io.BytesIO()
        np.save(buffer, array)
        s3_client.put_object(Bucket=bucket, Key=f"datasets/bc/{name}", Body=buffer.getvalue())
    result_file = tmp_path / "result.json"
    code = main(["--local", "--train", f"s3://{bucket}/datasets/bc",
                 "--output-path", f"s3://{bucket}/models", "--job-name", "local-job",
                 "-H", "model=LogisticRegression", "-H", "C=0.5",  # one letter: `-C 0.5`
                 "--result-file", str(result_file),
                 "--work-dir", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err
    prefix = "models/local-job/output"
    model_obj = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz")
    assert model_obj["ServerSideEncryption"] == "AES256"
    assert _tar_names(model_obj["Body"].read()) == ["client.zip", "manifest.json", "server.zip"]
    output_obj = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/output.tar.gz")
    assert _tar_names(output_obj["Body"].read()) == ["metrics.json", "reference_model.json"]
    out = capsys.readouterr().out
    assert f"model_data: s3://{bucket}/{prefix}/model.tar.gz" in out.splitlines()
    assert json.loads(result_file.read_text())["output_data"] == f"s3://{bucket}/{prefix}/output.tar.gz"
    job_root = tmp_path / "work" / "local-job"
    assert sorted(p.name for p in (job_root / "input" / "data" / "training").iterdir()) == [
        "bc_features.npy", "bc_labels.npy"]
    assert json.loads((job_root / "input" / "config" / "hyperparameters.json").read_text()) == {
        "model": "LogisticRegression", "C": "0.5"}


def test_local_mode_failure_surfaces_the_failure_file(
        s3_env: dict[str, str], s3_client: object, bucket: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a,b,target\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    code = main(["--local", "--train", str(data), "--output-path", f"s3://{bucket}/models",
                 "--job-name", "bad-job"])
    assert code == 1
    err = capsys.readouterr().err
    assert "training failed (exit code 2): DataError: train.csv has no label column 'label'" in err
    assert "set hyperparameter 'label_column'" in err
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_local_mode_empty_s3_prefix(s3_env: dict[str, str], bucket: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--local", "--train", f"s3://{bucket}/nothing/", "--output-path",
                 f"s3://{bucket}/models"])
    assert code == 1
    assert f"no objects under s3://{bucket}/nothing/" in capsys.readouterr().err


def test_aws_errors_are_reported_not_raised(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--local", "--train", "s3://missing-bucket/data/", "--output-path",
                 "s3://fhe-bucket/models"])
    assert code == 1
    assert "AWS call failed (NoSuchBucket" in capsys.readouterr().err


def test_generated_job_names_are_sortable_and_prefixed() -> None:
    name = start_training.default_job_name("concrete-fhe")
    assert name.startswith("concrete-fhe-20")
    assert len(name) == len("concrete-fhe-2026-01-01-00-00-00-000")


def test_config_value_types_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"instance_count": "two", "wait": "no", "local": True,
                                  "train": "d", "output_path": "s3://bkt/p"}))
    with pytest.raises(LaunchConfigError, match=r"instance_count must be int, got 'two'.*"
                                                r"wait must be bool, got 'no'"):
        LaunchSettings.resolve(["--config", str(config)], {})


def test_local_job_names_are_unique(s3_env: dict[str, str], bucket: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "work" / "job-a" / "model").mkdir(parents=True)
    (tmp_path / "work" / "job-a" / "model" / "old").write_text("x")
    code = main(["--local", "--train", str(tmp_path), "--output-path", f"s3://{bucket}/m",
                 "--job-name", "job-a", "--work-dir", str(tmp_path / "work")])
    assert code == 1
    assert "already exists: choose another --job-name" in capsys.readouterr().err
