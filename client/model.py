"""Fetch the client half of a model (client.zip + manifest.json) and check it can be used here.

``model.tar.gz`` is downloaded once into a cache directory keyed by its S3 ETag (or, for a
local archive, its sha256). Only ``client.zip`` and ``manifest.json`` are taken out of the
archive, read as bytes and written under fixed names: member paths are never used as file
paths, so a crafted archive cannot write outside the cache. Before concrete-ml ever opens
client.zip, the versions recorded in the manifest are compared with this interpreter and the
sha256 of client.zip with the manifest's fingerprint.

**Reference mode.** A model saved by concrete-ml alone (``FHEModelDev(dir, model).save()``, as
the AWS sample's training script does) has no manifest.json. Such a model is used in reference
mode: the versions are read from client.zip's own ``versions.json`` (what concrete-ml checks)
and compared the same way, and the model's class, task and feature count come from client.zip.
What the mode lacks, compared with a model trained by this kit:

* no scaler: rows are encrypted exactly as given, so prepare them as the training data was;
* no class labels: ``predict`` returns class indices (the sorted order of the training labels);
* no model fingerprint on the wire and no checksums of keys and ciphertexts: an endpoint
  serving another model fails at decryption or returns noise, not a clear error;
* one row per request, with exactly the two fields the sample's server accepts
  (``evaluation_keys_uri``, ``encrypted_query_uri``), so no batching.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import FingerprintMismatchError, ModelArtifactError, VersionMismatchError
from client.storage import S3Storage
from common.artifact import (
    CLIENT_ZIP,
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    NoScaler,
    file_sha256,
    read_manifest,
    runtime_versions,
)
from common.contract import sha256_hex
from common.files import ArchiveError, atomic_write_bytes, read_members
from common.s3_location import S3LocationError, is_s3_location, parse_s3_uri

logger = logging.getLogger(__name__)

CLIENT_FILES = (CLIENT_ZIP, MANIFEST_NAME)
MAX_MEMBER_BYTES = {CLIENT_ZIP: 256 << 20, MANIFEST_NAME: 4 << 20}
EXACT_PACKAGES = ("concrete-python", "concrete-ml")
# Files concrete-ml writes into client.zip (FHEModelDev.save): versions and the circuit's specs.
VERSIONS_JSON = "versions.json"
CLIENT_SPECS_JSON = "client.specs.json"
MAX_JSON_BYTES = 64 << 20


@dataclass(frozen=True)
class ClientModel:
    """The client half of a model, on local disk and checked.

    Attributes:
        source: Where it came from (an ``s3://`` URI or a local path).
        model_dir: Directory holding ``client.zip`` and ``manifest.json``.
        manifest: The parsed manifest; in reference mode, one derived from client.zip (no
            scaler, no classes, the versions of client.zip, the sha256 of client.zip).
        reference_mode: True when the model has no manifest.json (see the module docstring).
    """

    source: str
    model_dir: Path
    manifest: Manifest
    reference_mode: bool = False

    @property
    def fingerprint(self) -> str:
        """sha256 of client.zip (the model fingerprint sent with every request)."""
        return self.manifest.client_fingerprint

    @property
    def circuit(self) -> dict[str, Any]:
        """The circuit's knobs as training recorded them: ``rounding_bits``, ``rounding_method``,
        ``p_error``, ``exact``, ``agreement`` (measured on held-out rows), ``reason``. Empty in
        reference mode and for models trained before these were recorded."""
        return dict(self.manifest.circuit)

    @property
    def p_error(self) -> float | None:
        """Probability that one bootstrap of the circuit is off by one (None: concrete-ml's
        default, about 2^-40: exact in practice)."""
        return self.manifest.circuit.get("p_error")

    @property
    def exact(self) -> bool | None:
        """True when FHE predictions equal the clear quantised model's bit for bit (default
        p_error, no approximate rounding); None when unknown (no record)."""
        return self.manifest.circuit.get("exact")

    @property
    def agreement(self) -> dict[str, Any] | None:
        """Measured share of held-out rows where the circuit predicted what the clear quantised
        model predicts (``simulated``: every held-out row; ``fhe``: a few executed in FHE)."""
        return self.manifest.circuit.get("agreement")


def check_versions(
    recorded: Mapping[str, str], *, source: str, current: Mapping[str, str] | None = None
) -> None:
    """Compare the versions a model was built with against this environment.

    Raises:
        VersionMismatchError: naming every mismatch at once, and how to fix it.
    """
    current = dict(runtime_versions() if current is None else current)
    problems: list[str] = []
    want_py = _major_minor(recorded.get("python"))
    have_py = _major_minor(current.get("python"))
    if want_py is None or want_py != have_py:
        problems.append(
            f"Python: model built with {recorded.get('python', 'an unrecorded version')},"
            f" this interpreter is {current.get('python')} (major.minor must match)"
        )
    for package in EXACT_PACKAGES:
        if recorded.get(package) != current.get(package):
            problems.append(
                f"{package}: model built with {recorded.get(package, 'an unrecorded version')},"
                f" installed here {current.get(package, 'none')}"
            )
    if not problems:
        return
    pins = " ".join(f"{p}=={recorded[p]}" for p in EXACT_PACKAGES if p in recorded)
    raise VersionMismatchError(
        f"model {source} cannot be used from this environment:\n  - "
        + "\n  - ".join(problems)
        + f"\nFix: run the client with Python {want_py or '<as the training image>'} and"
        f" `pip install {pins or 'the pinned concrete-python and concrete-ml'}`"
        " (requirements/lock.txt pins them for 3.11, lock-py312.txt for 3.12), or retrain with an"
        " image built for this environment"
        f" (Dockerfile build argument PYTHON_VERSION={have_py})."
    )


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


def check_fingerprint(
    model_dir: Path, manifest: Manifest, *, source: str, expected: str | None = None
) -> None:
    """Verify sha256(client.zip) against the manifest (and against ``expected`` if given).

    Raises:
        FingerprintMismatchError: the file on disk is not the one the manifest describes.
    """
    try:
        recorded = manifest.client_fingerprint
    except KeyError as exc:
        raise ModelArtifactError(
            f"{source}: manifest.json has no fingerprint for {CLIENT_ZIP};"
            " retrain with this kit's training script"
        ) from exc
    actual = file_sha256(model_dir / CLIENT_ZIP)
    if actual != recorded:
        raise FingerprintMismatchError(
            f"{source}: sha256({CLIENT_ZIP}) is {actual} but manifest.json records {recorded};"
            " the archive is corrupt or was modified: download the model again or retrain"
        )
    if expected is not None and expected != recorded:
        raise FingerprintMismatchError(
            f"{source}: model fingerprint is {recorded} but {expected} was expected;"
            " point at the model the endpoint serves (its model.tar.gz)"
        )


def load_client_model(
    source: str | os.PathLike[str],
    *,
    storage: S3Storage | None,
    cache_dir: Path,
    expected_fingerprint: str | None = None,
    current_versions: Mapping[str, str] | None = None,
) -> ClientModel:
    """Get client.zip + manifest.json from ``source`` and check them.

    Args:
        source: ``s3://…/model.tar.gz``, a local ``model.tar.gz``, or a model directory.
        storage: S3 access, required for ``s3://`` sources.
        cache_dir: Where downloaded archives are extracted (one subdirectory per archive).
        expected_fingerprint: Refuse a model whose client.zip sha256 differs.
        current_versions: Override of this environment's versions (for tests).

    Raises:
        ModelArtifactError, VersionMismatchError, FingerprintMismatchError, StorageError.
    """
    text = os.fspath(source)
    if is_s3_location(text):
        if storage is None:
            raise ModelArtifactError(f"{text}: an S3 model needs S3 access (pass a boto3 session)")
        model_dir = _fetch_s3_archive(text, storage=storage, cache_dir=cache_dir)
    elif Path(text).is_dir():
        model_dir = Path(text)
    elif Path(text).is_file():
        model_dir = _extract_cached(
            Path(text), cache_key=f"file-{file_sha256(text)}", cache_dir=cache_dir, source=text
        )
    else:
        raise ModelArtifactError(
            f"model {text!r} not found: give s3://…/model.tar.gz,"
            " a local model.tar.gz or a directory holding client.zip"
        )
    if not (model_dir / CLIENT_ZIP).is_file():
        raise ModelArtifactError(
            f"{text}: {CLIENT_ZIP} is missing; the model directory must hold"
            f" {CLIENT_ZIP} (and {MANIFEST_NAME}, written by this kit's training)"
        )
    if not (model_dir / MANIFEST_NAME).is_file():
        return _reference_model(text, model_dir, expected_fingerprint=expected_fingerprint,
                                current_versions=current_versions)
    try:
        manifest = read_manifest(model_dir)
    except ArtifactError as exc:
        raise ModelArtifactError(f"{text}: {exc}") from exc
    check_versions(manifest.versions, source=text, current=current_versions)
    check_fingerprint(model_dir, manifest, source=text, expected=expected_fingerprint)
    return ClientModel(text, model_dir, manifest)


def _reference_model(source: str, model_dir: Path, *, expected_fingerprint: str | None,
                     current_versions: Mapping[str, str] | None) -> ClientModel:
    """A manifest-less model (plain concrete-ml artefact): checks from client.zip alone."""
    client_zip = model_dir / CLIENT_ZIP
    versions = _zip_json(client_zip, VERSIONS_JSON, source=source)
    check_versions({k: str(v) for k, v in versions.items()}, source=source,
                   current=current_versions)
    fingerprint = file_sha256(client_zip)
    if expected_fingerprint is not None and expected_fingerprint != fingerprint:
        raise FingerprintMismatchError(
            f"{source}: sha256({CLIENT_ZIP}) is {fingerprint} but {expected_fingerprint} was"
            " expected; point at the model the endpoint serves (its model.tar.gz)"
        )
    n_features = _input_features(_zip_json(client_zip, CLIENT_SPECS_JSON, source=source), source)
    fhe = _open_fhe_client(model_dir, source)
    from concrete.ml.common.utils import is_classifier_or_partial_classifier

    task = "classification" if is_classifier_or_partial_classifier(fhe.model) else "regression"
    manifest = Manifest(
        model_class=type(fhe.model).__name__, task=task, n_features=n_features,
        scaler=NoScaler(n_features), versions={k: str(v) for k, v in versions.items()},
        fingerprints={CLIENT_ZIP: fingerprint},
    )
    logger.warning(
        "%s has no %s: reference mode (a plain concrete-ml model, e.g. trained by the AWS"
        " sample). Rows are encrypted as given (no scaler), predict() returns class indices,"
        " each row is its own request with only evaluation_keys_uri and encrypted_query_uri,"
        " and the server cannot check the model fingerprint or checksums.", source, MANIFEST_NAME,
    )
    return ClientModel(source, model_dir, manifest, reference_mode=True)


def _zip_json(client_zip: Path, name: str, *, source: str) -> dict[str, Any]:
    """Read one JSON member of client.zip (size-bounded), as concrete-ml wrote it."""
    try:
        with zipfile.ZipFile(client_zip) as archive:
            info = archive.getinfo(name)
            if info.file_size > MAX_JSON_BYTES:
                raise ModelArtifactError(f"{source}: {CLIENT_ZIP}/{name} is too large")
            doc = json.loads(archive.read(info))
    except (KeyError, zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, ModelArtifactError):
            raise
        raise ModelArtifactError(
            f"{source}: {CLIENT_ZIP} has no readable {name} ({exc}); it is not a client.zip"
            " saved by concrete-ml (FHEModelDev.save)"
        ) from exc
    if not isinstance(doc, dict):
        raise ModelArtifactError(f"{source}: {CLIENT_ZIP}/{name} is not a JSON object")
    return doc


def _input_features(specs: Mapping[str, Any], source: str) -> int:
    """Features per row of the circuit's single input (its abstract shape after the batch axis)."""
    try:
        [circuit] = specs["circuits"]
        [encrypted] = circuit["inputs"]
        shape = encrypted["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"]
        return int(math.prod(shape[1:]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(
            f"{source}: {CLIENT_ZIP} does not describe one circuit with one encrypted input"
            f" ({exc!r}); this client serves single-input concrete-ml models"
        ) from exc


def _fetch_s3_archive(uri: str, *, storage: S3Storage, cache_dir: Path) -> Path:
    try:
        location = parse_s3_uri(uri, field="model")
    except S3LocationError as exc:
        raise ModelArtifactError(str(exc)) from exc
    etag = storage.etag(location)
    key = sha256_hex(f"{uri}\n{etag}".encode())[:32]
    final = cache_dir / "models" / key
    if _complete(final):
        return final
    with tempfile.TemporaryDirectory(dir=_ensure_dir(cache_dir)) as tmp:
        archive = Path(tmp) / "model.tar.gz"
        storage.download_file(location, archive)
        return _extract_cached(archive, cache_key=key, cache_dir=cache_dir, source=uri)


def _complete(model_dir: Path) -> bool:
    # Cache directories appear by an atomic rename of a staging directory: client.zip present
    # means everything the archive had (manifest.json is absent for reference-mode models).
    return (model_dir / CLIENT_ZIP).is_file()


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _extract_cached(archive: Path, *, cache_key: str, cache_dir: Path, source: str) -> Path:
    """Extract client.zip + manifest.json into ``cache_dir/models/<cache_key>`` (atomically)."""
    final = cache_dir / "models" / cache_key
    if _complete(final):
        return final
    members = read_client_members(archive, source=source)
    staging = Path(tempfile.mkdtemp(dir=_ensure_dir(final.parent), prefix=f".{cache_key}."))
    try:
        for name, data in members.items():
            atomic_write_bytes(staging / name, data)
        try:
            os.rename(staging, final)
        except OSError:  # another process finished first, or a stale partial dir is in the way
            if not _complete(final):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_client_members(archive: Path, *, source: str) -> dict[str, bytes]:
    """Read client.zip (and manifest.json, if present) out of a model.tar.gz.

    Raises:
        ModelArtifactError: not a tar archive, client.zip missing, duplicated, or too large.
    """
    try:
        return read_members(archive, MAX_MEMBER_BYTES, source=source, optional=(MANIFEST_NAME,))
    except ArchiveError as exc:
        raise ModelArtifactError(str(exc)) from exc


def training_job_model_data(sagemaker: Any, *, job_name: str | None = None,
                            base_job_name: str | None = None) -> str:
    """``s3://…/model.tar.gz`` of a training job, or of the newest completed job of a base name.

    Args:
        sagemaker: A boto3 ``sagemaker`` client.
        job_name: A completed training job.
        base_job_name: Instead: the newest completed job named ``base`` or ``base-…``.

    Raises:
        ModelArtifactError: no such completed job (the message says what to check).
        StorageError: the SageMaker call failed.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from client.storage import translate
    from common.training_jobs import JobLookupError, find_model

    try:
        return find_model(sagemaker, job_name=job_name, base_job_name=base_job_name).model_data
    except JobLookupError as exc:
        raise ModelArtifactError(str(exc)) from exc
    except ValueError as exc:
        raise ModelArtifactError(f"name a training job or a base job name: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, action="finding the training job") from exc


def load_fhe_client(model: ClientModel) -> Any:
    """Open concrete-ml's FHEModelClient on a checked model (call only after the checks).

    Raises:
        ModelArtifactError: concrete-ml cannot load client.zip.
    """
    return _open_fhe_client(model.model_dir, model.source)


def _open_fhe_client(model_dir: Path, source: str) -> Any:
    from concrete.ml.deployment import FHEModelClient

    try:
        return FHEModelClient(str(model_dir))
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise ModelArtifactError(f"{source}: concrete-ml cannot load {CLIENT_ZIP}: {exc}") from exc


def describe(model: ClientModel) -> dict[str, Any]:
    """A JSON-ready summary of a model (for ``python -m client info``)."""
    m = model.manifest
    return {
        "source": model.source,
        "mode": "reference (no manifest.json)" if model.reference_mode else "manifest",
        "model_dir": str(model.model_dir),
        "model_class": m.model_class,
        "task": m.task,
        "n_features": m.n_features,
        "classes": list(m.classes),
        "feature_names": list(m.feature_names),
        "hyperparameters": m.hyperparameters,
        "circuit": m.circuit,
        "versions": m.versions,
        "fingerprints": m.fingerprints,
        "this_python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
