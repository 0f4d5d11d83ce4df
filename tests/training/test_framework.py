"""The Concrete estimator (control plane mocked by moto)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
import sagemaker
from moto import mock_aws
from sagemaker.model import Model

from framework import TRAINING_SCRIPT, Concrete

ROLE = "arn:aws:iam::123456789012:role/fhe-training"
TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/concrete-training:1"
SERVE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/concrete-inference:1"


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[sagemaker.Session]:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="fhe-bucket")
        yield sagemaker.Session(default_bucket="fhe-bucket")


def _estimator(session: sagemaker.Session, **kwargs: object) -> Concrete:
    return Concrete(image_uri=TRAIN_IMAGE, role=ROLE, instance_type="ml.c5.xlarge",
                    output_path="s3://fhe-bucket/models", sagemaker_session=session, **kwargs)


def test_training_image_is_the_given_one(session: sagemaker.Session) -> None:
    estimator = _estimator(session)
    assert estimator.training_image_uri() == TRAIN_IMAGE
    assert estimator._framework_name == "concrete"
    assert estimator.entry_point == str(TRAINING_SCRIPT)


def test_image_uri_is_required() -> None:
    with pytest.raises(ValueError, match="image_uri is required"):
        Concrete(image_uri="", role=ROLE, instance_type="ml.c5.xlarge")


def test_create_model_returns_a_model_for_the_inference_image(session: sagemaker.Session) -> None:
    estimator = _estimator(session, inference_image_uri=SERVE_IMAGE)
    estimator.fit({"training": "s3://fhe-bucket/data/"}, wait=False, job_name="fhe-fit-1")
    model = estimator.create_model(env={"FHE_MAX_BATCH_SIZE": "16"})
    assert isinstance(model, Model)
    assert model.image_uri == SERVE_IMAGE
    assert model.model_data == "s3://fhe-bucket/models/fhe-fit-1/output/model.tar.gz"
    assert model.role == ROLE
    assert model.env == {"FHE_MAX_BATCH_SIZE": "16"}
    other = estimator.create_model(image_uri="other-image", role="arn:aws:iam::1:role/x")
    assert (other.image_uri, other.role) == ("other-image", "arn:aws:iam::1:role/x")


def test_create_model_needs_an_inference_image_and_a_job(session: sagemaker.Session) -> None:
    estimator = _estimator(session)
    with pytest.raises(ValueError, match="no inference image"):
        estimator.create_model()
    with pytest.raises(ValueError, match="call fit"):
        estimator.create_model(image_uri=SERVE_IMAGE)
