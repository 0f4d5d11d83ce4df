"""Settings.from_env: SageMaker's names, defaults, one aggregated error."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.contract import S3Uri
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
    with pytest.raises(SettingsError, match=r"'FHE_ALLOWED_S3_PREFIXES' must look like 's3://"
                                            r"bucket/prefix', got 'bucket/x': it must start with"
                                            r" 's3://'; "
                                            r"SAGEMAKER_BIND_TO_PORT='http' is not a whole number; "
                                            r"SAGEMAKER_MODEL_SERVER_WORKERS='0' must be >= 1$"):
        Settings.from_env(env)


def test_prefix_matching() -> None:
    prefix = parse_allowed_prefix("s3://bucket/fhe/")
    assert prefix.contains(S3Uri("bucket", "fhe/keys/a.ekl"))
    assert not prefix.contains(S3Uri("bucket", "other/fhe/a"))
    assert not prefix.contains(S3Uri("bucket2", "fhe/a"))
    assert parse_allowed_prefix("s3://bucket").contains(S3Uri("bucket", "anything"))


def test_an_allowed_prefix_without_a_slash_is_segment_bounded() -> None:
    """The demo's FHE_ALLOWED_S3_PREFIXES=s3://fhe-demo/client never allows client-evil/."""
    (prefix,) = Settings.from_env({"FHE_ALLOWED_S3_PREFIXES": "s3://fhe-demo/client"}
                                  ).allowed_prefixes
    assert str(prefix) == "s3://fhe-demo/client/"
    assert prefix.contains(S3Uri("fhe-demo", "client/q.bin"))
    assert not prefix.contains(S3Uri("fhe-demo", "client-evil/q.bin"))


def test_allowed_prefixes_with_encodings_or_dot_segments_are_refused() -> None:
    env = {"FHE_ALLOWED_S3_PREFIXES": "s3://b-1/a/../c,s3://b-1/%2e,s3://b-1/x\\n"}
    with pytest.raises(SettingsError, match=r"'\.' or '\.\.' segment; .*'%'.*; .*'\\\\'"):
        Settings.from_env(env)


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


def test_the_runtime_and_its_circuit_cache_are_read_and_round_trip() -> None:
    assert Settings.from_env({}).runtime == "concrete-ml"
    settings = Settings.from_env({"FHE_RUNTIME": "compiler", "FHE_CIRCUIT_CACHE_DIR": "/c"})
    assert (settings.runtime, settings.circuit_cache_dir) == ("compiler", Path("/c"))
    assert Settings.from_env(settings.to_env()) == settings


def test_an_unknown_runtime_is_named_with_the_choices() -> None:
    with pytest.raises(SettingsError, match=r"SAGEMAKER_MODEL_SERVER_WORKERS='0' must be >= 1;"
                                            r" FHE_RUNTIME='torch' is not one of concrete-ml,"
                                            r" compiler$"):
        Settings.from_env({"FHE_RUNTIME": "torch", "SAGEMAKER_MODEL_SERVER_WORKERS": "0"})
