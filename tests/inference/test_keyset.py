"""Key counts read from serialized keys match the circuit's keyset; garbage is refused."""

from __future__ import annotations

import pytest

from inference.keyset import KeysetFormatError, KeysetShape, serialized_keyset_shape
from inference.model import FheModel
from tests.fixtures.models import FixtureModel
from tests.inference.conftest import KeyedClient


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
