"""Finding a training job's model on SageMaker's control plane (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from common.training_jobs import (
    JobLookupError,
    describe_model,
    find_model,
    newest_completed_job,
)
from local_mode.s3_server import LOCAL_REGION

ROLE = "arn:aws:iam::123456789012:role/fhe-training"
OUTPUT = "s3://fhe-models/MNIST"


@pytest.fixture
def sagemaker() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sagemaker", region_name=LOCAL_REGION)


def _create(sagemaker: Any, name: str, *, status: str = "Completed") -> None:
    sagemaker.create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": OUTPUT},
        ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1,
                        "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    if status != "Completed":  # moto completes jobs at once: set the state SageMaker would show
        from moto.sagemaker.models import sagemaker_backends

        job = sagemaker_backends["123456789012"][LOCAL_REGION].training_jobs[name]
        job.training_job_status = status


def _model(name: str) -> str:
    return f"{OUTPUT}/{name}/output/model.tar.gz"


def test_newest_completed_job_of_a_base_name_not_the_first_listed(sagemaker: Any) -> None:
    # Listed (and created) first, and the largest name: neither may decide.
    _create(sagemaker, "mnist-zz-oldest")
    _create(sagemaker, "mnist-aa-newest-completed")
    _create(sagemaker, "mnist-mm-still-running", status="InProgress")
    _create(sagemaker, "mnist2-other-base")
    _create(sagemaker, "old-mnist-contains-the-name")
    found = find_model(sagemaker, base_job_name="mnist")
    assert (found.job_name, found.model_data) == ("mnist-aa-newest-completed",
                                                 _model("mnist-aa-newest-completed"))
    # Every page counts: with two jobs per page the newest is on the last page.
    assert newest_completed_job(sagemaker, "mnist", page_size=2) == "mnist-aa-newest-completed"


def test_a_named_job_gives_its_model(sagemaker: Any) -> None:
    _create(sagemaker, "fhe-job-1")
    _create(sagemaker, "fhe-job-2")
    assert find_model(sagemaker, job_name="fhe-job-1").model_data == _model("fhe-job-1")


def test_unfinished_or_unknown_jobs_are_clear_errors(sagemaker: Any) -> None:
    _create(sagemaker, "mnist-failed", status="Failed")
    with pytest.raises(JobLookupError, match=r"'mnist-failed' is Failed; it has no model to serve"):
        describe_model(sagemaker, "mnist-failed")
    with pytest.raises(JobLookupError, match=r"no completed training job named 'mnist' or mnist-"):
        find_model(sagemaker, base_job_name="mnist")
    with pytest.raises(JobLookupError, match=r"training job 'nope' not found .*check the name"):
        find_model(sagemaker, job_name="nope")
    with pytest.raises(ValueError, match="exactly one of job_name and base_job_name"):
        find_model(sagemaker, job_name="a", base_job_name="b")
