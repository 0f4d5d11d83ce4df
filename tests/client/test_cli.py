"""``python -m client``: info, keys, file formats, exit codes (no endpoint needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from client.cli import main, read_features, write_predictions
from client.errors import InvalidInputError
from client.settings import ClientSettings


def test_info_prints_the_manifest(fixture_models, tmp_path, capsys) -> None:
    linear = fixture_models["linear"]
    assert main(["info", "--model", str(linear.model_dir), "--cache-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_class"] == "LogisticRegression"
    assert doc["fingerprints"]["client.zip"] == linear.manifest.client_fingerprint
    assert doc["n_features"] == 30


def test_keys_generates_once_then_lists(fixture_models, tmp_path, capsys) -> None:
    args = [
        "keys",
        "--model",
        str(fixture_models["linear"].model_dir),
        "--key-dir",
        str(tmp_path / "keys"),
        "--no-progress",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["model"]["generated_now"] is True
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["model"]["generated_now"] is False
    [entry] = second["key_sets"]
    assert entry["fingerprint"] == fixture_models["linear"].manifest.client_fingerprint
    assert set(entry["files"]) == {"keyset.bin", "evaluation_keys.ekl", "keys.json"}
    assert entry["files"]["evaluation_keys.ekl"] == first["model"]["evaluation_keys_bytes"]


def test_bad_input_file_exits_2_with_the_reason(fixture_models, tmp_path, capsys) -> None:
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((2, 5)))
    code = main(
        [
            "predict",
            "--endpoint-name",
            "e",
            "--model",
            str(fixture_models["linear"].model_dir),
            "--s3-prefix",
            "s3://bucket/p",
            "--input",
            str(bad),
            "--output",
            str(tmp_path / "y.npy"),
            "--region",
            "us-east-1",
            "--key-dir",
            str(tmp_path / "k"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "error: X has 5 features per row but the model expects 30" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def test_version_mismatch_exits_1(fixture_models, tmp_path, capsys) -> None:
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(fixture_models["linear"].model_dir, model_dir)
    doc = json.loads((model_dir / "manifest.json").read_text())
    doc["versions"]["concrete-ml"] = "0.1.0"
    (model_dir / "manifest.json").write_text(json.dumps(doc))
    assert main(["info", "--model", str(model_dir)]) == 1
    assert "concrete-ml: model built with 0.1.0" in capsys.readouterr().err


def test_csv_with_and_without_header(tmp_path) -> None:
    with_header = tmp_path / "h.csv"
    with_header.write_text("a,b,label\n1,2,0\n3,4,1\n")
    np.testing.assert_array_equal(
        read_features(with_header, drop_columns=["label"]), [[1, 2], [3, 4]]
    )
    bare = tmp_path / "n.csv"
    bare.write_text("1,2\n3,4\n")
    np.testing.assert_array_equal(read_features(bare), [[1, 2], [3, 4]])
    with pytest.raises(InvalidInputError, match=r"no column\(s\) \['y'\] to drop"):
        read_features(with_header, drop_columns=["y"])
    with pytest.raises(InvalidInputError, match=r"must be a \.npy or \.csv"):
        read_features(tmp_path / "x.parquet")


def test_predictions_are_written_as_npy_or_csv(tmp_path) -> None:
    values = np.array([0, 1, 1])
    write_predictions(tmp_path / "p.npy", values)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), values)
    write_predictions(tmp_path / "p.csv", np.array([[0.25, 0.75]]))
    assert (tmp_path / "p.csv").read_text() == "0.25,0.75\n"
    with pytest.raises(InvalidInputError, match=r"must end in \.npy or \.csv"):
        write_predictions(tmp_path / "p.txt", values)


def test_settings_come_from_the_environment(tmp_path) -> None:
    settings = ClientSettings.from_env(
        {
            "AWS_ENDPOINT_URL_S3": "http://s3",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": "http://rt",
            "AWS_REGION": "eu-west-1",
            "FHE_CLIENT_KEY_DIR": str(tmp_path),
        }
    )
    assert settings == ClientSettings("http://s3", "http://rt", "eu-west-1", tmp_path, None)
    assert ClientSettings.from_env({}) == ClientSettings()


def test_module_entry_point_shows_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "--help"], capture_output=True, text=True, check=True
    )
    assert "{predict,keys,info}" in result.stdout


@pytest.fixture
def two_training_jobs(fixture_models, monkeypatch):
    """moto: jobs mnist-b (older, linear model) and mnist-a (newer, tree model), models in S3."""
    import boto3
    from moto import mock_aws

    from tests.client.conftest import make_model_tar

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        sm, s3 = boto3.client("sagemaker"), boto3.client("s3")
        s3.create_bucket(Bucket="models")
        for name, kind in (("mnist-b", "linear"), ("mnist-a", "tree")):
            sm.create_training_job(
                TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/fhe-training",
                AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
                OutputDataConfig={"S3OutputPath": "s3://models/MNIST"},
                ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1,
                                "VolumeSizeInGB": 10},
                StoppingCondition={"MaxRuntimeInSeconds": 3600})
            s3.put_object(Bucket="models", Key=f"MNIST/{name}/output/model.tar.gz",
                          Body=make_model_tar(fixture_models[kind].model_dir))
        yield


def test_info_of_the_newest_completed_training_job(two_training_jobs, fixture_models, tmp_path,
                                                   capsys) -> None:
    assert main(["info", "--latest-training-job", "mnist", "--cache-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "s3://models/MNIST/mnist-a/output/model.tar.gz"
    assert doc["fingerprints"]["client.zip"] == fixture_models["tree"].manifest.client_fingerprint
    assert main(["info", "--training-job", "mnist-b", "--cache-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["model_class"] == "LogisticRegression"
    assert main(["info", "--training-job", "nope", "--cache-dir", str(tmp_path)]) == 1
    assert "training job 'nope' not found" in capsys.readouterr().err


def test_predictor_from_training_job(two_training_jobs, fixture_models, tmp_path) -> None:
    from client import EncryptedPredictor
    from client.errors import ModelArtifactError

    with EncryptedPredictor.from_training_job(
            "endpoint", "s3://models/client", base_job_name="mnist", key_dir=tmp_path / "keys",
            cache_dir=tmp_path / "cache", progress=False) as predictor:
        assert predictor.model.source == "s3://models/MNIST/mnist-a/output/model.tar.gz"
        assert predictor.fingerprint == fixture_models["tree"].manifest.client_fingerprint
    with pytest.raises(ModelArtifactError, match=r"no completed training job named 'other'"):
        EncryptedPredictor.from_training_job("endpoint", "s3://models/client",
                                             base_job_name="other", cache_dir=tmp_path / "c")
