"""The training image, run as SageMaker runs it: ``docker run IMAGE train`` on a job layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.images import ImageBuild, TrainingRun, run_training
from common.artifact import read_manifest
from common.sagemaker_layout import JobLayout
from tests.containers.conftest import GOOD_JOB, IMAGE_TEST_TIMEOUT, new_job

# The first test to need an image builds it (cold: minutes), inside its own time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]


def test_good_job_leaves_exactly_the_model_artifact(
        trained_job: tuple[JobLayout, TrainingRun]) -> None:
    job, run = trained_job
    assert run.returncode == 0, run.log.read_text(errors="replace")[-4000:]
    assert sorted(p.name for p in job.model_dir.iterdir()) == [
        "client.zip", "manifest.json", "server.zip"]
    assert not job.failure_file.exists()
    manifest = read_manifest(job.model_dir)
    assert manifest.model_class == GOOD_JOB["model"]
    assert manifest.n_features == 30
    metrics = json.loads((job.output_data_dir / "metrics.json").read_text())
    assert metrics["hyperparameters"]["n_bits"] == GOOD_JOB["n_bits"]
    assert metrics["clear_quantised"] > 0.9
    assert (job.output_data_dir / "reference_model.json").is_file()


def test_bad_job_fails_and_names_every_problem(
        training_image: ImageBuild, breast_cancer: tuple[np.ndarray, ...], tmp_path,
        container_logs) -> None:
    x_train, _, y_train, _ = breast_cancer
    job = new_job(tmp_path / "job", {"model": "LogisticRegression", "n_bits": 99,
                                     "colour": "blue"}, x_train, y_train)
    run = run_training(training_image.tag, job, job_name="fhe-bad-job",
                       log=container_logs / "train-bad.log")
    assert run.returncode != 0
    reason = job.failure_file.read_text()
    assert "n_bits" in reason and "colour" in reason, reason
    assert list(job.model_dir.iterdir()) == []

