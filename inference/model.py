"""The loaded FHE circuit: key checks, one-row runs, the model fingerprint."""

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

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model directory cannot be served (missing server.zip, version mismatch, bad manifest)."""


@dataclass(frozen=True)
class FheModel:
    """A compiled concrete-ml circuit ready to run.

    Attributes:
        server: The ``concrete.ml.deployment.FHEModelServer``.
        keyset_shape: The keys the circuit needs.
        fingerprint: sha256 of the model's client.zip (what clients send), or None if unknown.
        load_seconds: How long loading took (concrete recompiles the MLIR at load).
    """

    server: Any
    keyset_shape: KeysetShape
    fingerprint: str | None
    load_seconds: float

    @classmethod
    def load(cls, model_dir: Path) -> FheModel:
        """Load ``model_dir/server.zip`` (and the fingerprint from the manifest or client.zip).

        Raises:
            ModelLoadError: the directory cannot be served.
        """
        from concrete.ml.deployment import FHEModelServer

        model_dir = Path(model_dir)
        if not (model_dir / SERVER_ZIP).is_file():
            raise ModelLoadError(
                f"{model_dir / SERVER_ZIP} not found: set FHE_MODEL_DIR to a model directory"
                " (server.zip, client.zip, manifest.json) or deploy a model.tar.gz holding one"
            )
        fingerprint = _fingerprint(model_dir)
        started = time.perf_counter()
        try:
            server = FHEModelServer(str(model_dir))
        except Exception as exc:
            raise ModelLoadError(f"cannot load {model_dir / SERVER_ZIP}: {exc}") from exc
        load_seconds = time.perf_counter() - started
        shape = circuit_keyset_shape(server.server.client_specs.program_info.serialize())
        logger.info("loaded %s in %.2f s (circuit needs %s)", model_dir / SERVER_ZIP,
                    load_seconds, shape.describe())
        return cls(server, shape, fingerprint, load_seconds)

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
        from concrete import fhe

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
            return fhe.EvaluationKeys.deserialize(data)
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
            return self.server.run(ciphertext, keys)
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
