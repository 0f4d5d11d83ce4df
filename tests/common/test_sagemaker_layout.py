"""The SageMaker job layout, written by the local job and read by the training script alike."""

from __future__ import annotations

import json
from pathlib import Path

from common.sagemaker_layout import JobLayout, TrainingEnvironment, job_outputs
from inference.settings import Settings
from training.training_script import TrainingSettings, failure_file_path


def test_the_container_layout_is_sagemakers() -> None:
    """The toolkit's documented values (sagemaker-training ENVIRONMENT_VARIABLES.md)."""
    env = JobLayout().environment({"n_bits": "4"})
    assert {name: env[name] for name in ("SM_MODEL_DIR", "SM_CHANNEL_TRAINING", "SM_OUTPUT_DIR",
                                         "SM_OUTPUT_DATA_DIR", "SM_INPUT_CONFIG_DIR")} == {
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
        "SM_OUTPUT_DIR": "/opt/ml/output",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
        "SM_INPUT_CONFIG_DIR": "/opt/ml/input/config",
    }
    assert json.loads(env["SM_CHANNELS"]) == ["training"]
    assert json.loads(env["SM_HPS"]) == {"n_bits": "4"}
    assert Settings().model_dir == Path("/opt/ml/model")  # the serving container's default


def test_what_the_local_job_writes_the_training_script_reads(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "job").create()
    env = layout.environment({})
    job = TrainingEnvironment.from_env(env)
    assert (job.model_dir, job.channel("training"), job.output_dir, job.output_data_dir) == (
        layout.model_dir, layout.channel_dir, layout.output_dir, layout.output_data_dir)
    settings = TrainingSettings.from_env(env)
    assert (settings.model_dir, settings.train_dir, settings.output_data_dir) == (
        layout.model_dir, layout.channel_dir, layout.output_data_dir)
    assert failure_file_path(settings) == layout.failure_file
    assert all(folder.is_dir() for folder in (layout.config_dir, layout.channel_dir,
                                              layout.model_dir, layout.output_data_dir))


def test_outside_sagemaker_nothing_is_required() -> None:
    job = TrainingEnvironment.from_env({"SM_MODEL_DIR": "  ", "SM_CHANNELS": "[]"})
    assert job == TrainingEnvironment()
    assert failure_file_path(TrainingSettings.from_env({})) == Path("/opt/ml/output/failure")


def test_job_outputs_land_where_sagemaker_puts_them() -> None:
    for output_path in ("s3://bkt/models", "s3://bkt/models/"):
        assert tuple(map(str, job_outputs(output_path, "job-1"))) == (
            "s3://bkt/models/job-1/output/model.tar.gz",
            "s3://bkt/models/job-1/output/output.tar.gz")
