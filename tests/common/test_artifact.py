"""The model artefact format: scaler, manifest validation, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.artifact import (
    CLIENT_ZIP,
    MANIFEST_NAME,
    SERVER_ZIP,
    ArtifactError,
    Manifest,
    NoScaler,
    Scaler,
    file_sha256,
    fit_scaler,
    read_manifest,
    verify_artifact,
)
from tests.fixtures.models import FixtureModel


def test_scaler_maps_training_range_to_minus_one_one() -> None:
    data = np.array([[0.0, 5.0, 7.0], [10.0, 15.0, 7.0], [5.0, 10.0, 7.0]])
    scaler = Scaler.fit(data)
    scaled = scaler.transform(data)
    np.testing.assert_allclose(scaled[:, 0], [-1.0, 1.0, 0.0])
    np.testing.assert_allclose(scaled[:, 1], [-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(scaled[:, 2], [0.0, 0.0, 0.0])  # constant feature
    assert Scaler.from_dict(json.loads(json.dumps(scaler.to_dict()))) == scaler


def test_no_scaler_passes_rows_through_and_round_trips_in_the_manifest(
    fixture_models: dict[str, FixtureModel],
) -> None:
    data = np.array([[0.0, 5000.0], [-3.5, 1e-3]])
    scaler = fit_scaler("none", data)
    assert scaler == NoScaler(2)
    np.testing.assert_array_equal(scaler.transform(data), data)
    doc = json.loads((fixture_models["linear"].model_dir / MANIFEST_NAME).read_bytes())
    doc.update(n_features=2, scaler={"kind": "none", "n_features": 2})
    assert Manifest.from_json(json.dumps(doc).encode()).scaler == NoScaler(2)
    assert json.loads(Manifest.from_json(json.dumps(doc).encode()).to_json())["scaler"] == {
        "kind": "none", "n_features": 2}
    assert fit_scaler("minmax", data) == Scaler.fit(data)


def test_saved_artifact_has_files_manifest_and_true_fingerprints(
    fixture_models: dict[str, FixtureModel],
) -> None:
    fixture = fixture_models["linear"]
    manifest = read_manifest(fixture.model_dir)
    assert manifest == fixture.manifest
    assert manifest.client_fingerprint == file_sha256(fixture.model_dir / CLIENT_ZIP)
    assert manifest.fingerprints[SERVER_ZIP] == file_sha256(fixture.model_dir / SERVER_ZIP)
    assert (manifest.model_class, manifest.task, manifest.n_features) == (
        "LogisticRegression", "classification", 30)
    assert manifest.versions["concrete-ml"] == "1.9.0"


def test_missing_manifest_says_what_to_point_at(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"produced by training/training_script\.py"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format_version=99), "format 99 is not supported"),
        (lambda d: d.pop("fingerprints"), "not a valid manifest"),
        (lambda d: d.update(task="ranking"), "task must be one of"),
        (lambda d: d.update(n_features=3), "scaler and n_features disagree"),
        (lambda d: d["scaler"].update(kind="zscore"), "unsupported scaler"),
    ],
)
def test_invalid_manifests_are_rejected(
    fixture_models: dict[str, FixtureModel], mutate, message: str
) -> None:
    doc = json.loads((fixture_models["linear"].model_dir / MANIFEST_NAME).read_bytes())
    mutate(doc)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_json(json.dumps(doc).encode())


def test_verify_artifact_names_every_bad_file(
    fixture_models: dict[str, FixtureModel], tmp_path: Path
) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(fixture_models["linear"].model_dir, model_dir)
    assert verify_artifact(model_dir) == fixture_models["linear"].manifest
    with open(model_dir / SERVER_ZIP, "ab") as handle:
        handle.write(b"tampered")
    (model_dir / CLIENT_ZIP).unlink()
    with pytest.raises(ArtifactError, match=(
        r"server\.zip does not match the sha256 in manifest\.json; client\.zip is missing:"
        r" re-extract model\.tar\.gz")):
        verify_artifact(model_dir)
