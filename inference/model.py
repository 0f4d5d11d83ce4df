"""The loaded FHE circuit: key checks, one-row runs, the model fingerprint.

How the circuit runs (concrete-ml's FHEModelServer, or concrete's compiler runtime alone) is the
runtime's business (:mod:`inference.runtimes`); the checks here are the same for both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.artifact import (
    CLIENT_ZIP,
    MANIFEST_NAME,
    SERVER_ZIP,
    ArtifactError,
    file_sha256,
    verify_artifact,
)
from inference.errors import ModelMismatch
from inference.keyset import (
    KeysetFormatError,
    KeysetShape,
    circuit_keyset_shape,
    serialized_keyset_shape,
)
from inference.runtimes import (
    RUNTIME_CONCRETE_ML,
    CircuitRuntime,
    ModelLoadError,
    load_runtime,
)

logger = logging.getLogger(__name__)

__all__ = ["FheModel", "ModelLoadError"]


@dataclass(frozen=True)
class FheModel:
    """A compiled concrete-ml circuit ready to run.

    Attributes:
        runtime: What runs the circuit (:mod:`inference.runtimes`).
        keyset_shape: The keys the circuit needs.
        fingerprint: sha256 of the model's client.zip (what clients send), or None if unknown.
        load_seconds: How long loading took (concrete compiles the MLIR at load).
    """

    runtime: CircuitRuntime
    keyset_shape: KeysetShape
    fingerprint: str | None
    load_seconds: float

    @classmethod
    def load(cls, model_dir: Path, *, runtime: str = RUNTIME_CONCRETE_ML,
             circuit_cache_dir: Path | None = None) -> FheModel:
        """Load ``model_dir/server.zip`` (and the fingerprint from the manifest or client.zip).

        Args:
            model_dir: Holds server.zip (and client.zip, manifest.json).
            runtime: One of :data:`inference.runtimes.RUNTIMES`.
            circuit_cache_dir: Where the ``compiler`` runtime keeps compiled circuits (shared by
                a container's workers).

        Raises:
            ModelLoadError: the directory cannot be served.
        """
        model_dir = Path(model_dir)
        if not (model_dir / SERVER_ZIP).is_file():
            raise ModelLoadError(
                f"{model_dir / SERVER_ZIP} not found: set FHE_MODEL_DIR to a model directory"
                " (server.zip, client.zip, manifest.json) or deploy a model.tar.gz holding one"
            )
        fingerprint = _fingerprint(model_dir)
        started = time.perf_counter()
        loaded = load_runtime(runtime, model_dir, cache_dir=circuit_cache_dir)
        load_seconds = time.perf_counter() - started
        shape = circuit_keyset_shape(loaded.program_info_json())
        logger.info("loaded %s with the %s runtime in %.2f s (circuit needs %s)",
                    model_dir / SERVER_ZIP, loaded.name, load_seconds, shape.describe())
        return cls(loaded, shape, fingerprint, load_seconds)

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Refuse a request made with another model's client.zip.

        Raises:
            ModelMismatch: the fingerprints differ, or the server cannot know its own.
        """
        if fingerprint is None or fingerprint == self.fingerprint:
            return
        if self.fingerprint is None:
            raise ModelMismatch(
                "the request names a model_fingerprint but the deployed model has no client.zip"
                " to compare it with: redeploy the full model directory"
            )
        raise ModelMismatch(
            f"model_fingerprint {fingerprint} does not match the deployed model"
            f" ({self.fingerprint}): download this endpoint's client.zip and generate keys and"
            " ciphertexts with it"
        )

    def deserialize_keys(self, data: bytes) -> Any:
        """Check that serialized evaluation keys fit this circuit, then deserialise them.

        Raises:
            ModelMismatch: not concrete evaluation keys, or keys of another circuit.
        """
        try:
            shape = serialized_keyset_shape(data)
        except KeysetFormatError as exc:
            raise ModelMismatch(
                f"the evaluation keys are not concrete evaluation keys ({exc}): upload the bytes"
                " of FHEModelClient.get_serialized_evaluation_keys()"
            ) from exc
        if shape != self.keyset_shape:
            raise ModelMismatch(
                f"the evaluation keys hold {shape.describe()}, this model needs"
                f" {self.keyset_shape.describe()}: they were generated for another model;"
                " generate keys with this endpoint's client.zip"
            )
        try:
            return self.runtime.deserialize_keys(data)
        except RuntimeError as exc:
            raise ModelMismatch(
                f"the evaluation keys cannot be deserialised ({exc}): upload the bytes of"
                " FHEModelClient.get_serialized_evaluation_keys()"
            ) from exc

    def run(self, ciphertext: bytes, keys: Any, *, index: int = 0) -> bytes:
        """Run the circuit on one serialized encrypted row.

        Raises:
            ModelMismatch: the ciphertext cannot be read or does not fit the circuit/keys.
        """
        try:
            return self.runtime.run(ciphertext, keys)
        except RuntimeError as exc:
            raise ModelMismatch(
                f"ciphertext {index} does not fit this model ({str(exc).splitlines()[0]}):"
                " encrypt one row with this endpoint's client.zip"
                " (FHEModelClient.quantize_encrypt_serialize) and the keys you sent"
            ) from exc


def _fingerprint(model_dir: Path) -> str | None:
    """The client.zip sha256; with a manifest, both zips are first checked against it."""
    if (model_dir / MANIFEST_NAME).is_file():
        try:
            return verify_artifact(model_dir).client_fingerprint
        except (ArtifactError, KeyError) as exc:
            raise ModelLoadError(f"the model directory cannot be served: {exc}") from exc
    if (model_dir / CLIENT_ZIP).is_file():
        return file_sha256(model_dir / CLIENT_ZIP)
    return None
