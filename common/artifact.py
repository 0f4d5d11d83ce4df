"""The model artefact: what training writes and what the server and the client read.

A model directory (SageMaker's ``model.tar.gz``) holds:

* ``server.zip`` — the compiled FHE circuit (concrete-ml ``FHEModelDev.save``), for the server.
* ``client.zip`` — quantizers and crypto parameters, for the client (key generation, encryption).
* ``manifest.json`` — :class:`Manifest`: model class, task, features, classes, the input scaler
  the client applies before encrypting (:class:`Scaler`, min-max to [-1, 1], or
  :class:`NoScaler`: rows are encrypted as given), the versions that produced the files (the
  client must run the same Python major.minor, concrete-python and concrete-ml), the sha256
  of both zips, and ``circuit``: its accumulator rounding and ``p_error``, whether it computes
  exactly what the clear quantised model computes, and (if not) its measured agreement with it.

A directory saved by concrete-ml alone (``FHEModelDev(dir, model).save()``, as the AWS sample
does) has no manifest; the server serves it and the client uses it in reference mode.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
SERVER_ZIP = "server.zip"
CLIENT_ZIP = "client.zip"
# The training job's output data (output.tar.gz): its metrics and the clear quantised model.
METRICS_NAME = "metrics.json"
REFERENCE_MODEL_NAME = "reference_model.json"
FORMAT_VERSION = 1
TASKS = ("classification", "regression")
SCALER_MINMAX = "minmax"
SCALER_NONE = "none"
SCALER_KINDS = (SCALER_MINMAX, SCALER_NONE)


class ArtifactError(ValueError):
    """A model directory is missing files or carries an unreadable manifest."""


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_versions() -> dict[str, str]:
    """Versions that must match between the training image and the client."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        "concrete-python": version("concrete-python"),
        "concrete-ml": version("concrete-ml"),
        "numpy": version("numpy"),
        "platform": platform.machine(),
    }


@dataclass(frozen=True)
class Scaler:
    """Per-feature min-max scaling to [-1, 1], fitted on the training data.

    Stored as data (JSON), never pickled. Constant features map to 0.
    """

    data_min: tuple[float, ...]
    data_max: tuple[float, ...]

    @classmethod
    def fit(cls, features: np.ndarray) -> Scaler:
        """Fit on a 2-D float array (rows x features)."""
        features = np.asarray(features, dtype=np.float64)
        return cls(tuple(features.min(axis=0).tolist()), tuple(features.max(axis=0).tolist()))

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return len(self.data_min)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Scale a 2-D array; values outside the training range land outside [-1, 1]."""
        features = np.asarray(features, dtype=np.float64)
        lo, hi = np.asarray(self.data_min), np.asarray(self.data_max)
        span = hi - lo
        safe = np.where(span > 0, span, 1.0)
        scaled = 2.0 * (features - lo) / safe - 1.0
        return np.where(span > 0, scaled, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": "minmax", "feature_range": [-1.0, 1.0],
                "data_min": list(self.data_min), "data_max": list(self.data_max)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Scaler:
        """Inverse of :meth:`to_dict`."""
        if doc.get("kind") != SCALER_MINMAX or len(doc["data_min"]) != len(doc["data_max"]):
            raise ArtifactError(f"unsupported scaler in manifest: {doc.get('kind')!r}")
        return cls(tuple(map(float, doc["data_min"])), tuple(map(float, doc["data_max"])))


@dataclass(frozen=True)
class NoScaler:
    """No scaling: rows are encrypted exactly as given (the AWS sample's contract).

    A model trained with ``scaler=none`` can be used by any plain concrete-ml client: the
    caller prepares rows the way the training data was prepared, nothing else is applied.
    """

    n_features: int

    @classmethod
    def fit(cls, features: np.ndarray) -> NoScaler:
        """Remember the feature count of a 2-D array (rows x features)."""
        return cls(int(np.asarray(features).shape[1]))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Return the rows as float64, unchanged."""
        return np.array(features, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": SCALER_NONE, "n_features": self.n_features}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NoScaler:
        """Inverse of :meth:`to_dict`."""
        return cls(int(doc["n_features"]))


InputScaler = Scaler | NoScaler


def fit_scaler(kind: str, features: np.ndarray) -> InputScaler:
    """Fit the scaler named by the ``scaler`` hyperparameter (``minmax`` or ``none``)."""
    if kind == SCALER_MINMAX:
        return Scaler.fit(features)
    if kind == SCALER_NONE:
        return NoScaler.fit(features)
    raise ArtifactError(f"unknown scaler {kind!r}: use one of {', '.join(SCALER_KINDS)}")


def scaler_from_dict(doc: dict[str, Any]) -> InputScaler:
    """Read a manifest's ``scaler`` object (``kind`` ``minmax`` or ``none``).

    Raises:
        ArtifactError: another kind.
    """
    if doc.get("kind") == SCALER_NONE:
        return NoScaler.from_dict(doc)
    return Scaler.from_dict(doc)


@dataclass(frozen=True)
class Manifest:
    """Describes a model directory; see the module docstring."""

    model_class: str
    task: str
    n_features: int
    scaler: InputScaler
    classes: tuple[Any, ...] = ()
    feature_names: tuple[str, ...] = ()
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    circuit: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=runtime_versions)
    fingerprints: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def client_fingerprint(self) -> str:
        """sha256 of client.zip: the model fingerprint clients send with each request."""
        return self.fingerprints[CLIENT_ZIP]

    def to_json(self) -> bytes:
        """Serialize to indented JSON bytes."""
        doc = asdict(self)
        doc["scaler"] = self.scaler.to_dict()
        doc["classes"] = list(self.classes)
        doc["feature_names"] = list(self.feature_names)
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes.

        Raises:
            ArtifactError: not JSON, a newer format, or missing/invalid fields.
        """
        try:
            doc = json.loads(data)
            if doc.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"manifest format {doc.get('format_version')!r} is not supported "
                    f"(this kit reads format {FORMAT_VERSION}); upgrade the kit"
                )
            manifest = cls(
                model_class=str(doc["model_class"]),
                task=str(doc["task"]),
                n_features=int(doc["n_features"]),
                scaler=scaler_from_dict(doc["scaler"]),
                classes=tuple(doc.get("classes", ())),
                feature_names=tuple(doc.get("feature_names", ())),
                hyperparameters=dict(doc.get("hyperparameters", {})),
                circuit=dict(doc.get("circuit") or {}),
                versions=dict(doc["versions"]),
                fingerprints=dict(doc["fingerprints"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"{MANIFEST_NAME} is not a valid manifest: {exc!r}") from exc
        if manifest.task not in TASKS:
            raise ArtifactError(f"manifest task must be one of {TASKS}, got {manifest.task!r}")
        if manifest.scaler.n_features != manifest.n_features:
            raise ArtifactError("manifest scaler and n_features disagree")
        return manifest


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read ``manifest.json`` from a model directory.

    Raises:
        ArtifactError: the file is missing or invalid.
    """
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: point at a model directory produced by training/training_script.py"
            " (it holds server.zip, client.zip and manifest.json)"
        )
    return Manifest.from_json(path.read_bytes())


def save_artifact(
    model_dir: str | Path,
    model: Any,
    *,
    scaler: InputScaler,
    task: str,
    classes: Sequence[Any] = (),
    feature_names: Sequence[str] = (),
    hyperparameters: dict[str, Any] | None = None,
    circuit: dict[str, Any] | None = None,
) -> Manifest:
    """Save a fitted, compiled concrete-ml model as server.zip + client.zip + manifest.json.

    ``circuit`` records the circuit's knobs (rounding, p_error), whether it is exact and its
    measured agreement with the clear quantised model.

    Returns:
        The manifest written.
    """
    from concrete.ml.deployment import FHEModelDev

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in (SERVER_ZIP, CLIENT_ZIP):
        (model_dir / name).unlink(missing_ok=True)
    FHEModelDev(str(model_dir), model).save()
    manifest = Manifest(
        model_class=type(model).__name__,
        task=task,
        n_features=scaler.n_features,
        scaler=scaler,
        classes=tuple(classes),
        feature_names=tuple(feature_names),
        hyperparameters=dict(hyperparameters or {}),
        circuit=dict(circuit or {}),
        fingerprints={name: file_sha256(model_dir / name) for name in (SERVER_ZIP, CLIENT_ZIP)},
    )
    atomic_write_bytes(model_dir / MANIFEST_NAME, manifest.to_json())
    return manifest


def verify_artifact(model_dir: str | Path) -> Manifest:
    """Read the manifest and check server.zip and client.zip against its sha256 fingerprints.

    Raises:
        ArtifactError: the manifest is missing or invalid, a zip is missing, or a zip does not
            match (the directory mixes files of two trainings, or a file was altered).
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    problems = []
    for name in (SERVER_ZIP, CLIENT_ZIP):
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != manifest.fingerprints.get(name):
            problems.append(f"{name} does not match the sha256 in {MANIFEST_NAME}")
    if problems:
        raise ArtifactError(
            f"{model_dir}: {'; '.join(problems)}: re-extract model.tar.gz or re-run training"
        )
    return manifest
