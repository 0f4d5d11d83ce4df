"""Key counts read from serialized keys match the circuit's keyset; garbage is refused."""

from __future__ import annotations

import json
import struct

import pytest

from inference.errors import ModelMismatch
from inference.keyset import (
    KeysetFormatError,
    KeysetShape,
    circuit_keyset_shape,
    serialized_keyset_shape,
)
from inference.model import FheModel
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import KeyedClient


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_serialized_keys_match_their_circuit(kind: str, keyed: dict[str, KeyedClient],
                                             fixture_models: dict[str, FixtureModel]) -> None:
    model = FheModel.load(fixture_models[kind].model_dir)
    assert serialized_keyset_shape(keyed[kind].keys) == model.keyset_shape


def test_tree_needs_bootstrap_keys_linear_none(keyed: dict[str, KeyedClient]) -> None:
    assert serialized_keyset_shape(keyed["linear"].keys) == KeysetShape(0, 0, 0)
    assert serialized_keyset_shape(keyed["tree"].keys) == KeysetShape(1, 1, 0)


@pytest.mark.parametrize("data", [b"", b"\x00" * 4, b"\xff" * 64, b"garbage-keys" * 10])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(KeysetFormatError):
        serialized_keyset_shape(data)


def test_truncated_keys_are_refused(keyed: dict[str, KeyedClient]) -> None:
    with pytest.raises(KeysetFormatError, match="segment table says"):
        serialized_keyset_shape(keyed["tree"].keys[:-8])


def _capnp_keyset(bootstrap: int, keyswitch: int, packing: int) -> bytes:
    """A one-segment Cap'n Proto ServerKeyset: a root struct of three composite key lists."""
    words = [3 << 48]  # root: struct pointer, offset 0, no data words, 3 pointers
    # Each list pointer (words 1-3) points 2 words past itself at its tag (words 4-6); the
    # elements are empty structs, so a list is its tag word alone.
    words += [1 | (2 << 2) | (7 << 32)] * 3
    words += [count << 2 for count in (bootstrap, keyswitch, packing)]
    header = struct.pack("<II", 0, len(words))
    return header + b"".join(struct.pack("<Q", word) for word in words)


@pytest.mark.parametrize("counts", [(0, 0, 0), (1, 1, 0), (2, 3, 4), (0, 0, 1)])
def test_every_key_list_is_counted(counts: tuple[int, int, int]) -> None:
    assert serialized_keyset_shape(_capnp_keyset(*counts)) == KeysetShape(*counts)


def test_circuit_shape_counts_packing_keyswitch_keys() -> None:
    info = {"keyset": {"lweBootstrapKeys": [{}], "lweKeyswitchKeys": [{}, {}],
                       "packingKeyswitchKeys": [{}, {}, {}]}}
    assert circuit_keyset_shape(json.dumps(info)) == KeysetShape(1, 2, 3)


def test_keys_differing_only_in_packing_keys_are_refused(
        fixture_models: dict[str, FixtureModel]) -> None:
    model = FheModel.load(fixture_models["tree"].model_dir)
    assert model.keyset_shape == KeysetShape(1, 1, 0)
    with pytest.raises(ModelMismatch, match="hold 1 bootstrap, 1 keyswitch, 1 packing-keyswitch"
                       r" key\(s\), this model needs 1 bootstrap, 1 keyswitch, 0 packing"):
        model.deserialize_keys(_capnp_keyset(1, 1, 1))
