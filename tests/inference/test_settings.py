"""Settings.from_env: SageMaker's names, defaults, one aggregated error."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.contract import S3Uri
from inference.settings import Settings, SettingsError, parse_allowed_prefix


def test_defaults_fit_sagemaker_and_fhe() -> None:
    settings = Settings.from_env({})
    assert (settings.port, settings.workers, settings.model_dir) == (8080, 1, Path("/opt/ml/model"))
    assert settings.allowed_prefixes == ()


def test_reads_sagemaker_names_and_round_trips() -> None:
    env = {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120", "SM_MODEL_DIR": "/m",
           "FHE_ALLOWED_S3_PREFIXES": "s3://bkt-a/keys/, s3://bkt-b", "FHE_MAX_BATCH_SIZE": "8"}
    settings = Settings.from_env(env)
    assert (settings.port, settings.workers, settings.timeout) == (9000, 3, 120)
    assert settings.model_dir == Path("/m")
    assert [str(p) for p in settings.allowed_prefixes] == ["s3://bkt-a/keys/", "s3://bkt-b/"]
    assert Settings.from_env(settings.to_env()) == settings


def test_all_bad_values_in_one_error() -> None:
    env = {"SAGEMAKER_BIND_TO_PORT": "http", "SAGEMAKER_MODEL_SERVER_WORKERS": "0",
           "FHE_ALLOWED_S3_PREFIXES": "bucket/x"}
    with pytest.raises(SettingsError, match=r"FHE_ALLOWED_S3_PREFIXES: must look like 's3://bucket"
                                            r"/prefix', got 'bucket/x'; "
                                            r"SAGEMAKER_BIND_TO_PORT='http' is not a whole number; "
                                            r"SAGEMAKER_MODEL_SERVER_WORKERS='0' must be >= 1$"):
        Settings.from_env(env)


def test_prefix_matching() -> None:
    prefix = parse_allowed_prefix("s3://bucket/fhe/")
    assert prefix.allows(S3Uri("bucket", "fhe/keys/a.ekl"))
    assert not prefix.allows(S3Uri("bucket", "other/fhe/a"))
    assert not prefix.allows(S3Uri("bucket2", "fhe/a"))
    assert parse_allowed_prefix("s3://bucket").allows(S3Uri("bucket", "anything"))


def test_the_samples_server_variables_are_honoured() -> None:
    settings = Settings.from_env({"MODEL_SERVER_TIMEOUT": "3600", "MODEL_SERVER_WORKERS": "4"})
    assert (settings.timeout, settings.workers) == (3600, 4)


def test_sagemaker_names_win_over_the_samples() -> None:
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
                                  "MODEL_SERVER_TIMEOUT": "3600",
                                  "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
                                  "MODEL_SERVER_WORKERS": "8"})
    assert (settings.timeout, settings.workers) == (120, 2)


def test_a_bad_sample_variable_is_named_in_the_error() -> None:
    with pytest.raises(SettingsError, match=r"environment: MODEL_SERVER_WORKERS='0' must be >= 1; "
                                            r"MODEL_SERVER_TIMEOUT='1h' is not a whole number$"):
        Settings.from_env({"MODEL_SERVER_TIMEOUT": "1h", "MODEL_SERVER_WORKERS": "0"})
