"""How big this circuit's evaluation keys and encrypted rows are, from the model directory alone.

The server refuses an S3 object bigger than what its circuit can use (plus a small margin)
before its body is read: keys by their HEAD size, ciphertexts by the whole size a ranged GET
(at most the limit plus one byte) reports. The sizes come from the ``ProgramInfo`` that
server.zip carries as ``client.specs.json`` (plain JSON: no concrete, no torch):

* evaluation keys are a serialized ``ServerKeyset``: the bootstrap and keyswitch keys the
  keyset declares, each of 64-bit words whose count follows from its parameters (seeded keys,
  ``"compression": "seed"``, store only the bodies, the masks being regenerated from a seed);
* one encrypted row is the circuit's inputs, each ``concreteShape`` words (for a seeded LWE
  ciphertext the last dimension is the body plus the seed).

Measured (concrete-python 2.10, concrete-ml 1.9): the payload computed here is the serialized
size minus the Cap'n Proto framing, 64 bytes plus about 143 per key (keys of a circuit without
bootstrap: 0 computed, 64 serialized; a depth-2 tree, 1 bootstrap + 1 keyswitch key:
18,997,248 and 18,997,600; a depth-4 tree and a 3-tree forest, 3 + 3 keys: 77,268,992 and
77,269,912, 37,730,304 and 37,731,224; a 2-layer MLP, 2 + 2 keys: 35,215,360 and 35,216,000;
one encrypted 30-feature row: 720 and 984 bytes).
:data:`MARGIN_BYTES` and :data:`MARGIN_FRACTION` cover that framing with room to spare.
Packing keyswitch keys (no concrete-ml model measured here uses them) are bounded from above.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.artifact import SERVER_ZIP

SPECS_NAME = "client.specs.json"
SEEDED = "seed"
# An object may exceed the computed payload by this much (framing of the serialization).
MARGIN_BYTES = 64 << 10
MARGIN_FRACTION = 0.01
# The batch framing of common.contract: a 9-byte header, then an 8-byte length per item.
BATCH_HEADER_BYTES = 9
BATCH_FRAME_BYTES = 8


class CircuitSizesError(ValueError):
    """The model directory does not describe its circuit's keys and inputs."""


def with_margin(payload: int) -> int:
    """The largest serialized size accepted for ``payload`` computed bytes."""
    return payload + math.ceil(payload * MARGIN_FRACTION) + MARGIN_BYTES


@dataclass(frozen=True)
class CircuitSizes:
    """Serialized sizes of what a client sends for one circuit.

    Attributes:
        evaluation_keys_bytes: Computed payload of the circuit's evaluation keys.
        row_bytes: Computed payload of one encrypted row (all the circuit's inputs).
    """

    evaluation_keys_bytes: int
    row_bytes: int

    @property
    def max_evaluation_keys_bytes(self) -> int:
        """Largest evaluation-keys object accepted."""
        return with_margin(self.evaluation_keys_bytes)

    @property
    def max_row_bytes(self) -> int:
        """Largest object holding one encrypted row accepted."""
        return with_margin(self.row_bytes)

    def max_batch_bytes(self, max_items: int) -> int:
        """Largest batch-framed object of at most ``max_items`` encrypted rows accepted."""
        return BATCH_HEADER_BYTES + max_items * (BATCH_FRAME_BYTES + self.max_row_bytes)

    def describe(self) -> str:
        """For the log: the computed sizes."""
        return (f"evaluation keys {self.evaluation_keys_bytes} bytes, one encrypted row"
                f" {self.row_bytes} bytes (+{MARGIN_FRACTION:.0%} +{MARGIN_BYTES} accepted)")


def _words(params: Mapping[str, Any]) -> int:
    return int(params.get("integerPrecision", 64)) // 8


def _bootstrap_key_bytes(key: Mapping[str, Any]) -> int:
    p = key["params"]
    glwe_size = int(p["glweDimension"]) + 1
    per_level = glwe_size * int(p["polynomialSize"])  # one GLWE ciphertext's body (seeded)
    if key.get("compression") != SEEDED:
        per_level *= glwe_size  # masks too
    return int(p["inputLweDimension"]) * int(p["levelCount"]) * per_level * _words(p)


def _keyswitch_key_bytes(key: Mapping[str, Any]) -> int:
    p = key["params"]
    per_level = 1 if key.get("compression") == SEEDED else int(p["outputLweDimension"]) + 1
    return int(p["inputLweDimension"]) * int(p["levelCount"]) * per_level * _words(p)


def _packing_keyswitch_key_bytes(key: Mapping[str, Any]) -> int:
    """An upper bound: one GLWE ciphertext per level per input coefficient, masks included."""
    p = key["params"]
    glwe = (int(p["glweDimension"]) + 1) * int(p["polynomialSize"])
    return (int(p["inputLweDimension"]) + 1) * int(p["levelCount"]) * glwe * _words(p)


def _row_bytes(circuit: Mapping[str, Any]) -> int:
    total = 0
    for gate in circuit["inputs"]:
        type_info = gate["typeInfo"]
        if "lweCiphertext" in type_info:
            info = type_info["lweCiphertext"]
            dims = info["concreteShape"].get("dimensions", [])
        else:  # a clear input: its raw shape
            info = gate["rawInfo"]
            dims = info["shape"].get("dimensions", [])
        total += math.prod(int(d) for d in dims) * _words(info)
    return total


def sizes_from_program_info(program_info: Mapping[str, Any]) -> CircuitSizes:
    """The sizes a ``ProgramInfo`` (``client.specs.json``) implies.

    Raises:
        CircuitSizesError: the document lacks the keyset or the circuits' inputs.
    """
    try:
        keyset = program_info["keyset"]
        keys = (sum(map(_bootstrap_key_bytes, keyset.get("lweBootstrapKeys", [])))
                + sum(map(_keyswitch_key_bytes, keyset.get("lweKeyswitchKeys", [])))
                + sum(map(_packing_keyswitch_key_bytes, keyset.get("packingKeyswitchKeys", []))))
        rows = max(_row_bytes(circuit) for circuit in program_info["circuits"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CircuitSizesError(f"{SPECS_NAME} does not describe the circuit's keys and inputs"
                                f" ({type(exc).__name__}: {exc})") from exc
    return CircuitSizes(evaluation_keys_bytes=keys, row_bytes=rows)


def load_circuit_sizes(model_dir: Path) -> CircuitSizes:
    """The sizes of the circuit in ``model_dir/server.zip``.

    Raises:
        CircuitSizesError: server.zip or its client.specs.json is missing or unreadable.
    """
    path = Path(model_dir) / SERVER_ZIP
    try:
        with zipfile.ZipFile(path) as archive:
            doc = json.loads(archive.read(SPECS_NAME))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise CircuitSizesError(f"cannot read {SPECS_NAME} from {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CircuitSizesError(f"{SPECS_NAME} in {path} is not a JSON object")
    return sizes_from_program_info(doc)
